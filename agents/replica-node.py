#!/usr/bin/env python3
"""replica-node: this node's MariaDB, an asynchronous replica of the core's Galera cluster.

Shipped by keystone-multiregion to every replica of a replica region (cloud-init writes it
to /usr/local/sbin/replica-node); the local lab runs the very same file. Standard library
only. Reads /etc/keystone-multiregion/replica.json (root only): the ordered core Galera
nodes to replicate from (the first is this replica's own source, the others its
fallbacks), the replication account, the CA, the local accounts to create.

    replica-node prepare          runtime dirs, the health server's system user
    replica-node start [--no-server]
                                  starts MariaDB (systemctl; --no-server: it already runs, as
                                  in the lab), creates the local accounts, and on the first
                                  start seeds the replica: a consistent dump of the keystone
                                  database from the first source that answers (mariadb-dump
                                  --single-transaction: no lock on the core), loaded with
                                  binary logging off, then replication by GTID from that
                                  source over verified TLS from the dump's position. A seeded
                                  replica only makes sure replication runs.
    replica-node status           JSON: source, threads, Seconds_Behind_Master, Gtid_IO_Pos,
                                  gtid_slave_pos, errors; exit 0 only when healthy
    replica-node switch [--to NODE]
                                  replicate from the next core source that answers (or NODE),
                                  by GTID; refuses a candidate whose gtid_binlog_pos does not
                                  contain this replica's gtid_slave_pos (a transaction would
                                  be missed) and says why for every candidate
    replica-node watch [--interval S] [--after S]
                                  switches by itself when the source has not answered for
                                  --after seconds (the replica-watch service)
    replica-node health-server    HTTP 200 when both replication threads run and the lag is
                                  within max_lag_s, else 503 (the proxies' check, port 9200)

Only the Galera cluster's GTID domain is replicated (DO_DOMAIN_IDS): a core node's local
domain (gtid_domain_id, anything written outside the cluster) exists on that node alone,
and would make every other source refuse this replica's position.

SQL goes to the client on stdin, never in its arguments; the replication password reaches
mariadb-dump and the source check in a root-only option file (--defaults-file).
"""

import argparse
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

CONFIG = "/etc/keystone-multiregion/replica.json"
DATADIR = "/var/lib/mysql"
SOCKET = "/run/mysqld/mysqld.sock"
RUNTIME_DIRS = ("/run/mysqld", "/var/log/mysql")
# mariadbd (user mysql) reads the node's TLS key: root:mysql 0640, as galera-node prepare does.
SECRET_FILES = ("/etc/mysql/ssl/node-key.pem",)
MYSQL_PORT = 3306
# Written once the replica is seeded (on the data volume: a new volume seeds again).
SEED_MARKER = os.path.join(DATADIR, "keystone-multiregion-replica.json")
HEALTH_USER = "replica-health"
EXPORTER_USER = "prometheus"
HEALTH_CACHE_S = 1.0
HEALTH_MAX_CLIENTS = 8


def config():
    with open(CONFIG) as fh:
        return json.load(fh)


def _quote(value):
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _client(argv, sql, timeout):
    out = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"mariadb exited {out.returncode}")
    return out.stdout


def mysql(sql, timeout=10, user="root"):
    """Rows (lists of strings) of SQL over the local socket, as root or a unix_socket account."""
    prefix = ["mariadb"] if user == "root" else ["mariadb", "--no-defaults"]
    text = _client(prefix + ["--protocol=socket", "-S", SOCKET, "-u", user, "-N", "-B"], sql, timeout)
    return [line.split("\t") for line in text.splitlines()]


def _vertical(text):
    """`key: value` lines of the client's vertical (-E) output as a dict."""
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.lstrip().startswith("*"):
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def slave_status(user="root"):
    prefix = ["mariadb"] if user == "root" else ["mariadb", "--no-defaults"]
    text = _client(prefix + ["--protocol=socket", "-S", SOCKET, "-u", user, "-E"], "SHOW SLAVE STATUS", 5)
    return _vertical(text)


# -- GTID positions ---------------------------------------------------------------------

def parse_gtids(text):
    """'1-1-40,1001-1-3' -> {domain: seq_no} (one GTID per domain, as MariaDB keeps them)."""
    out = {}
    for part in (text or "").replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)-(\d+)", part)
        if not m:
            raise ValueError(f"{part!r} is not a GTID")
        out[int(m.group(1))] = int(m.group(3))
    return out


def missing_from(candidate, mine, domains):
    """What `candidate` (its gtid_binlog_pos) lacks of `mine` (the replica's gtid_slave_pos)
    in the replicated domains: [] when it contains every transaction this replica applied."""
    have, want = parse_gtids(candidate), parse_gtids(mine)
    gaps = []
    for domain in sorted(want):
        if domains and domain not in domains:
            continue
        if have.get(domain, -1) < want[domain]:
            gaps.append(f"domain {domain}: it has {have.get(domain, 'nothing')}, this replica applied "
                        f"{want[domain]}")
    return gaps


# -- the sources --------------------------------------------------------------------------

def reachable(address, timeout=2.0):
    try:
        with socket.create_connection((address, MYSQL_PORT), timeout=timeout):
            return True
    except OSError:
        return False


def _options_file(cfg, source):
    """A root-only option file with the replication account and verified TLS to `source`."""
    fd, path = tempfile.mkstemp(prefix="replica-node-", suffix=".cnf")
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o600)
        fh.write("[client]\n"
                 f"user = {cfg['replication_user']}\n"
                 f"password = {cfg['replication_password']}\n"
                 f"host = {source['address']}\n"
                 f"port = {MYSQL_PORT}\n"
                 f"ssl-ca = {cfg['ssl_ca']}\n"
                 "ssl-verify-server-cert\n")
    return path


def source_binlog_pos(cfg, source, timeout=10):
    """The source's gtid_binlog_pos, asked over verified TLS with the replication account."""
    path = _options_file(cfg, source)
    try:
        # --defaults-file: this file only (root's ~/.my.cnf would add root's credentials).
        text = _client(["mariadb", f"--defaults-file={path}", "-N", "-B"], "SELECT @@GLOBAL.gtid_binlog_pos", timeout)
    finally:
        os.unlink(path)
    return text.strip()


def change_master(cfg, source):
    """CHANGE MASTER to `source` by GTID (slave_pos), over verified TLS; then START SLAVE."""
    domains = ",".join(str(d) for d in cfg.get("domain_ids", []))
    mysql("STOP SLAVE")
    mysql(f"CHANGE MASTER TO MASTER_HOST={_quote(source['address'])}, MASTER_PORT={MYSQL_PORT}, "
          f"MASTER_USER={_quote(cfg['replication_user'])}, MASTER_PASSWORD={_quote(cfg['replication_password'])}, "
          f"MASTER_USE_GTID=slave_pos, MASTER_SSL=1, MASTER_SSL_CA={_quote(cfg['ssl_ca'])}, "
          f"MASTER_SSL_VERIFY_SERVER_CERT=1, MASTER_CONNECT_RETRY={int(cfg.get('connect_retry_s', 5))}, "
          f"MASTER_HEARTBEAT_PERIOD={int(cfg.get('heartbeat_s', 5))}"
          + (f", DO_DOMAIN_IDS=({domains})" if domains else ""))
    mysql("START SLAVE")


def by_address(cfg, address):
    for s in cfg["sources"]:
        if s["address"] == address:
            return s
    return None


# -- commands ---------------------------------------------------------------------------

def cmd_prepare(args):
    import grp
    import pwd
    uid, gid = pwd.getpwnam("mysql").pw_uid, grp.getgrnam("mysql").gr_gid
    for d in RUNTIME_DIRS:
        os.makedirs(d, exist_ok=True)
        os.chown(d, uid, gid)
    os.makedirs(DATADIR, exist_ok=True)
    os.chown(DATADIR, uid, gid)
    for path in SECRET_FILES:
        if os.path.exists(path):
            os.chown(path, 0, gid)
            os.chmod(path, 0o640)
    try:
        pwd.getpwnam(HEALTH_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", HEALTH_USER], check=True, capture_output=True, timeout=60)
    return 0


def wait_server(timeout=600):
    deadline = time.monotonic() + timeout
    while True:
        try:
            mysql("SELECT 1", timeout=5)
            return True
        except (RuntimeError, subprocess.TimeoutExpired, OSError):
            if time.monotonic() >= deadline:
                return False
        time.sleep(1)


def local_accounts(cfg):
    """Keystone's account (its password, REQUIRE SSL, from the proxies' network), the health
    server's and the exporter's (unix_socket): local to this replica, never replicated (only
    the keystone database is: replicate_wild_do_table), written with binary logging off."""
    done = []
    sql = ["SET SESSION sql_log_bin = 0"]
    for db in cfg.get("databases", []):
        sql.append(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    for user in cfg.get("users", []):
        require = " REQUIRE SSL" if user.get("require_ssl") else ""
        for host in user["hosts"]:
            account = f"{_quote(user['name'])}@{_quote(host)}"
            sql.append(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {_quote(user['password'])}{require}")
            sql.append(f"ALTER USER {account} IDENTIFIED BY {_quote(user['password'])}{require}")
            # Read-only by the server (read_only=ON; the account has no READ ONLY ADMIN).
            sql.append(f"GRANT SELECT ON `{user['database']}`.* TO {account}")
            done.append(f"{user['name']}@{host}")
    sql.append(f"CREATE USER IF NOT EXISTS {_quote(HEALTH_USER)}@'localhost' IDENTIFIED VIA unix_socket")
    sql.append(f"GRANT SLAVE MONITOR ON *.* TO {_quote(HEALTH_USER)}@'localhost'")
    sql.append(f"CREATE USER IF NOT EXISTS {_quote(EXPORTER_USER)}@'localhost' IDENTIFIED VIA unix_socket")
    sql.append(f"GRANT PROCESS, REPLICATION CLIENT, SLAVE MONITOR ON *.* TO {_quote(EXPORTER_USER)}@'localhost'")
    mysql(";\n".join(sql) + ";\n")
    return done


DUMP_GTID = re.compile(r"gtid_slave_pos\s*=\s*'([^']*)'")


def seed(cfg, source):
    """A consistent dump of the replicated databases from `source`, loaded here; returns the
    GTID position the dump was taken at."""
    path = _options_file(cfg, source)
    fd, dump = tempfile.mkstemp(prefix="replica-seed-", suffix=".sql", dir=cfg.get("seed_dir", DATADIR))
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(fd, 0o600)
            # --single-transaction: a consistent snapshot, and the binary log position of that
            # snapshot without FLUSH TABLES WITH READ LOCK (MariaDB 5.3 on); --master-data=2
            # --gtid: that position as a commented gtid_slave_pos line.
            run = subprocess.run(["mariadb-dump", f"--defaults-file={path}", "--single-transaction",
                                  "--master-data=2", "--gtid", "--routines", "--triggers",
                                  "--databases", *cfg.get("databases", ["keystone"])],
                                 stdout=out, stderr=subprocess.PIPE, text=True, timeout=3600)
        if run.returncode != 0:
            raise RuntimeError(f"mariadb-dump from {source['name']}: {run.stderr.strip()}")
        with open(dump) as fh:
            m = DUMP_GTID.search(fh.read(1 << 16))
        if not m:
            raise RuntimeError(f"the dump from {source['name']} names no GTID position (binary logs off there?)")
        with open(dump) as fh:
            load = subprocess.run(["mariadb", "--protocol=socket", "-S", SOCKET, "-u", "root",
                                   "--init-command=SET SESSION sql_log_bin = 0"],
                                  stdin=fh, capture_output=True, text=True, timeout=3600)
        if load.returncode != 0:
            raise RuntimeError(f"loading the dump: {load.stderr.strip()}")
        return m.group(1)
    finally:
        os.unlink(path)
        os.unlink(dump)


def cmd_start(args):
    cfg = config()
    if not args.no_server:
        subprocess.run(["systemctl", "start", "mariadb"], check=True, timeout=600)
    if not wait_server(timeout=args.timeout):
        print("replica-node: MariaDB does not answer on its socket", file=sys.stderr)
        return 1
    users = local_accounts(cfg)
    if os.path.exists(SEED_MARKER):
        mysql("START SLAVE")
        print(json.dumps({"node": cfg["node"], "action": "replicating", "users": users}))
        return 0
    reasons = []
    for source in cfg["sources"]:
        if not reachable(source["address"]):
            reasons.append(f"{source['name']}: port {MYSQL_PORT} does not answer")
            continue
        try:
            position = seed(cfg, source)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            reasons.append(f"{source['name']}: {exc}")
            continue
        mysql("STOP SLAVE; RESET SLAVE ALL")
        mysql(f"SET GLOBAL gtid_slave_pos = {_quote(position)}")
        change_master(cfg, source)
        with open(SEED_MARKER, "w") as fh:
            json.dump({"node": cfg["node"], "seeded_from": source["name"], "gtid": position,
                       "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, fh, sort_keys=True)
            fh.write("\n")
        print(json.dumps({"node": cfg["node"], "action": "seeded", "source": source["name"], "gtid": position,
                          "users": users}))
        return 0
    print("replica-node: no source could seed this replica: " + "; ".join(reasons), file=sys.stderr)
    return 1


def status(cfg, user="root"):
    s = slave_status(user=user)
    if not s:
        return {"node": cfg["node"], "replicating": False, "error": "no replication configured (not seeded?)",
                "healthy": False}
    source = by_address(cfg, s.get("Master_Host"))
    lag = s.get("Seconds_Behind_Master")
    if not s.get("Gtid_Slave_Pos"):  # SHOW SLAVE STATUS has no such field (SHOW ALL SLAVES STATUS has)
        rows = mysql("SELECT @@GLOBAL.gtid_slave_pos", user=user)
        s["Gtid_Slave_Pos"] = rows[0][0] if rows and rows[0] else ""
    out = {"node": cfg["node"], "source": source["name"] if source else s.get("Master_Host"),
           "source_address": s.get("Master_Host"),
           "io_running": s.get("Slave_IO_Running"), "sql_running": s.get("Slave_SQL_Running"),
           "seconds_behind_master": None if lag in (None, "NULL", "") else int(lag),
           "gtid_io_pos": s.get("Gtid_IO_Pos"), "gtid_slave_pos": s.get("Gtid_Slave_Pos"),
           "last_io_error": s.get("Last_IO_Error") or None, "last_sql_error": s.get("Last_SQL_Error") or None}
    out["healthy"] = healthy(out, cfg.get("max_lag_s", 60))
    return out


def healthy(st, max_lag_s):
    return (st.get("io_running") == "Yes" and st.get("sql_running") == "Yes"
            and st.get("seconds_behind_master") is not None and st["seconds_behind_master"] <= max_lag_s)


def cmd_status(args):
    cfg = config()
    try:
        st = status(cfg)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(json.dumps({"node": cfg["node"], "error": str(exc), "healthy": False}))
        return 1
    print(json.dumps(st, sort_keys=True))
    return 0 if st["healthy"] else 1


def candidates(cfg, current, to=None):
    """The sources to try, in order: NODE alone with --to; else every source after the current
    one, wrapping around (so neighbouring replicas keep using different regions)."""
    sources = cfg["sources"]
    if to:
        found = [s for s in sources if to in (s["name"], s["address"])]
        if not found:
            raise SystemExit(f"replica-node: {to} is not one of this replica's sources "
                             f"({', '.join(s['name'] for s in sources)})")
        return found
    names = [s["address"] for s in sources]
    i = names.index(current) + 1 if current in names else 0
    return [s for s in sources[i:] + sources[:i] if s["address"] != current]


def switch(cfg, to=None):
    """Replicate from the first candidate that answers and holds every transaction this
    replica applied. Returns (source, reasons): source None when every candidate was refused."""
    st = slave_status()
    current = st.get("Master_Host")
    rows = mysql("SELECT @@GLOBAL.gtid_slave_pos")
    mine = rows[0][0] if rows and rows[0] else ""
    domains = set(cfg.get("domain_ids", []))
    reasons = []
    for source in candidates(cfg, current, to):
        if not reachable(source["address"]):
            reasons.append(f"{source['name']}: port {MYSQL_PORT} does not answer")
            continue
        try:
            theirs = source_binlog_pos(cfg, source)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            reasons.append(f"{source['name']}: {exc}")
            continue
        gaps = missing_from(theirs, mine, domains)
        if gaps:
            reasons.append(f"{source['name']}: would miss transactions ({'; '.join(gaps)})")
            continue
        change_master(cfg, source)
        return source, reasons, mine, theirs
    return None, reasons, mine, None


def cmd_switch(args):
    cfg = config()
    source, reasons, mine, theirs = switch(cfg, args.to)
    if source is None:
        print("replica-node: refused to switch, no candidate: " + "; ".join(reasons), file=sys.stderr)
        return 1
    print(json.dumps({"node": cfg["node"], "switched_to": source["name"], "gtid_slave_pos": mine,
                      "source_gtid_binlog_pos": theirs, "skipped": reasons}, sort_keys=True))
    return 0


def should_switch(st, source_answers, down_since, now, after_s):
    """(switch now?, new down_since): the source counts as down while its port does not answer
    and the IO thread is not running; a switch once it has been down `after_s` seconds."""
    if st.get("io_running") == "Yes" or source_answers:
        return False, None
    since = down_since if down_since is not None else now
    return now - since >= after_s, since


def cmd_watch(args):
    cfg = config()
    down_since = None
    while True:
        try:
            st = status(cfg)
            answers = bool(st.get("source_address")) and reachable(st["source_address"])
            go, down_since = should_switch(st, answers, down_since, time.monotonic(), args.after)
            if go:
                source, reasons, _, _ = switch(cfg)
                print(json.dumps({"node": cfg["node"], "switched_to": source and source["name"],
                                  "skipped": reasons}), flush=True)
                if source:
                    down_since = None
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            print(f"replica-node watch: {exc}", file=sys.stderr, flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)


# -- the health server (agents/node_health.py, shipped next to this program) ---------------

# This program's modules, shipped here; the program's own directory comes first, so the copy
# under agents/ runs with its neighbours.
LIB_DIR = "/usr/local/lib/keystone-multiregion"


def _lib_module(name):
    """The module `name` from this program's directory or LIB_DIR; a clear exit when it is
    missing (the node's files are incomplete), not a traceback."""
    own = os.path.dirname(os.path.abspath(__file__))
    for d in (LIB_DIR, own):  # own ends first, even when it was on sys.path already
        if d in sys.path:
            sys.path.remove(d)
        sys.path.insert(0, d)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SystemExit(f"replica-node: cannot load {name}.py from {own} or {LIB_DIR} ({exc}): this node's "
                         "files are incomplete: run the region stack's update again (its push writes them)")


def _query_failed(exc):
    return {"error": str(exc), "healthy": False}


def HealthCache(query, ttl=HEALTH_CACHE_S, clock=time.monotonic):  # noqa: N802 (was a class here)
    """One query at a time, its answer reused for `ttl` seconds (node_health.HealthCache)."""
    return _lib_module("node_health").HealthCache(query, ttl=ttl, clock=clock, on_error=_query_failed)


def HealthServer(address, health, max_clients=HEALTH_MAX_CLIENTS):  # noqa: N802 (was a class here)
    """200 only when the status says healthy (both threads run, lag within max_lag_s)."""
    nh = _lib_module("node_health")
    return nh.HealthServer(address, health, judge=nh.judged_by_its_own_word, max_clients=max_clients)


def drop_privileges(user):
    _lib_module("node_health").drop_privileges(user, "replica-node")


def cmd_health_server(args):
    # The configuration (sources, max lag) is read as root; the replication password in it
    # is not kept: the health server needs names and the lag bound only.
    _lib_module("node_health")  # before anything else: a missing module is one clear line
    cfg = config()
    public = {"node": cfg["node"], "max_lag_s": cfg.get("max_lag_s", 60),
              "sources": [{"name": s["name"], "address": s["address"]} for s in cfg["sources"]]}
    server = HealthServer((args.address, args.port), HealthCache(lambda: status(public, user=HEALTH_USER)))
    drop_privileges(HEALTH_USER)
    server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="replica-node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    st = sub.add_parser("start")
    st.add_argument("--no-server", action="store_true", help="MariaDB already runs (the lab starts mariadbd)")
    st.add_argument("--timeout", type=float, default=600, help="seconds to wait for MariaDB's socket")
    sub.add_parser("status")
    sw = sub.add_parser("switch")
    sw.add_argument("--to", metavar="NODE", help="this source only (name or address)")
    w = sub.add_parser("watch")
    w.add_argument("--interval", type=float, default=5)
    w.add_argument("--after", type=float, default=20, help="seconds the source must be down before a switch")
    w.add_argument("--once", action="store_true", help="one check, then exit")
    h = sub.add_parser("health-server")
    h.add_argument("--address", required=True)
    h.add_argument("--port", type=int, default=9200)
    args = parser.parse_args(argv)
    handler = {"prepare": cmd_prepare, "start": cmd_start, "status": cmd_status, "switch": cmd_switch,
               "watch": cmd_watch, "health-server": cmd_health_server}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
