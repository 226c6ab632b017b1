#!/usr/bin/env python3
"""node-agent: apply the files a region stack pushes to this running node.

Shipped by keystone-multiregion to every node (/usr/local/sbin/node-agent); the local lab
runs the very same file over SSH. Standard library only.

    node-agent apply [--timeout S]   the push: a JSON payload on stdin (keystone_multiregion/
                                     push.py) with every file of the node and the action a
                                     change needs; installs what changed, then acts; prints
                                     what it applied as JSON (last line)
    node-agent check                 drift: every applied file still as pushed (exit 1 names
                                     the files that differ)
    node-agent health [--timeout S]  the node's role is healthy (exit 0), waiting up to S
    node-agent metrics               the node's own metrics for Prometheus, written for
                                     node_exporter's textfile collector (METRICS_FILE):
                                     files drifted from the last push, certificate expiry,
                                     and by role: VIPs held, memcached answering, Keystone
                                     healthy and its keys as pushed (a systemd timer runs it)

A push is refused, with one line and nothing changed (exit 2), when: the payload does not
parse or is for another node; a file fails its check (`haproxy -c`, `keepalived -t`, a
Galera setting `mariadbd` rejects); or the action would cost the cluster its quorum or the
region its last healthy node of the role (a Galera restart while another member is away,
memcached restarted while no other memcached of the region answers, a replica restarted
while no other replica of its region answers its health check). Otherwise the files
are installed atomically (a new file beside the old, renamed over it; an existing file
keeps its owner and mode, which the node's own set-up chose), the actions run in a fixed
order with the least disruption each allows, and the agent waits until the node is
healthy again before it answers: the stack pushes a role's next node only then.
"""

import argparse
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.environ.get("NODE_AGENT_ROOT", "/")  # tests only: a tree standing in for /
FACTS = "/etc/keystone-multiregion/node.json"
STATE_DIR = "/var/lib/keystone-multiregion"
APPLIED = f"{STATE_DIR}/applied.json"
LOCK = f"{STATE_DIR}/node-agent.lock"
# Where the lab names its stand-in for systemctl (a VM has no such file: systemctl itself).
SERVICE_MANAGER = "/etc/keystone-multiregion/service-manager"
KEY_DIGESTS = f"{STATE_DIR}/key-digests.json"  # keystone-node: the keys are installed
GALERA_DRAIN = f"{STATE_DIR}/galera-drain"  # galera-node's health check answers 503 meanwhile
# node_exporter's textfile collector reads *.prom here (Debian's prometheus-node-exporter).
METRICS_DIR = "/var/lib/prometheus/node-exporter"
METRICS_FILE = f"{METRICS_DIR}/keystone-multiregion.prom"
METRICS_CACHE = f"{STATE_DIR}/certificate-expiry.json"  # file digest -> notAfter (no openssl each run)
KEYSTONE_NODE = "/usr/local/sbin/keystone-node"
# A Galera node's backups (roles/backup.py; galera-node backup writes the status).
BACKUP_PLAN = "/etc/keystone-multiregion/backup.json"
BACKUP_SECRETS = "/etc/keystone-multiregion/backup-secrets.json"
BACKUP_STATUS = "/var/lib/keystone-multiregion/backup-status.json"
# A replica region's replica (roles/replica.py; agents/replica-node.py).
REPLICA_NODE = "/usr/local/sbin/replica-node"
REPLICA_CONFIG = "/etc/keystone-multiregion/replica.json"
# Read replica.json once, at their start: the sources (replica-watch) and their names.
REPLICA_UNITS = ("replica-health", "replica-watch")

# The actions in the order they run (keystone_multiregion/push.py, ACTIONS).
ORDER = ("none", "systemd:daemon-reload", "galera:settings", "galera:restart", "galera:users", "replica:restart",
         "garbd:restart",
         "haproxy:reload", "keepalived:reload", "sysctl:apply", "memcached:restart", "keystone:reload",
         "exporter:restart", "node-exporter:restart")
# MariaDB settings a running server takes with SET GLOBAL; any other change restarts it.
GALERA_LIVE = {"max_connections", "wsrep_slave_threads", "wsrep_applier_threads", "wsrep_sync_wait",
               "wsrep_dirty_reads", "innodb_buffer_pool_size", "max_allowed_packet", "wait_timeout",
               "wsrep_retry_autocommit", "innodb_flush_log_at_trx_commit", "wsrep_certify_nonPK"}
# Read only when the server starts, and harmless to leave until then: the peer list (a
# running member learns its peers from the group; a region added or removed changes it).
GALERA_AT_START = {"wsrep_cluster_address"}
# Provider options Galera takes at run time (SET GLOBAL wsrep_provider_options).
GALERA_PROVIDER_LIVE = {"pc.weight"}
GALERA_SECTIONS = ("mysqld", "galera", "mariadb", "server", "mariadbd")


class Refused(Exception):
    """Nothing was changed: the line says why."""


class Failed(Exception):
    """Files were installed but an action or the health check after it failed."""


def path(p):
    return os.path.join(ROOT, p.lstrip("/"))


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read_bytes(p):
    try:
        fd = os.open(path(p), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{p} is not a regular file on this node (a link?); remove it first") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def facts():
    data = read_bytes(FACTS)
    return json.loads(data) if data else None


def systemctl(*args, timeout=600, check=True):
    manager = read_bytes(SERVICE_MANAGER)
    argv = [manager.decode().strip() if manager else "systemctl", *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise Failed(f"{' '.join(argv)} failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-300:]}")
    return out


def sql(statement, timeout=30):
    """As root over the local socket, the statement on stdin (never in argv)."""
    out = subprocess.run(["mariadb", "--batch", "--skip-column-names"], input=statement, capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise Failed(out.stderr.strip()[-300:] or f"mariadb exit {out.returncode}")
    return out.stdout


# -- payload ---------------------------------------------------------------------------------
def parse_payload(text, node_facts):
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Refused(f"the payload does not parse as JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("files"), list):
        raise Refused("the payload is not a version 1 push (version, node, role, files)")
    if node_facts is None:
        raise Refused(f"{FACTS} is missing: this node was not set up by keystone-multiregion's cloud-init")
    if data.get("node") != node_facts.get("name"):
        raise Refused(f"the payload is for {data.get('node')!r}, this node is {node_facts.get('name')!r} "
                      "(check the address and host key the stack connects to)")
    for f in data["files"]:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not f["path"].startswith("/") \
                or ".." in f["path"].split("/") or not isinstance(f.get("content"), str):
            raise Refused(f"a file entry is malformed: {str(f)[:120]}")
        if f.get("on_change", "none") not in ORDER:
            raise Refused(f"{f['path']}: unknown action {f.get('on_change')!r} (this agent knows {', '.join(ORDER)})")
        try:
            int(f.get("mode", "0644"), 8)
        except (TypeError, ValueError):
            raise Refused(f"{f['path']}: mode {f.get('mode')!r} is not an octal mode") from None
    return data


def changes(data):
    """The files whose content differs from what the node holds."""
    out = []
    for f in data["files"]:
        current = read_bytes(f["path"])
        if current is None or sha256(current) != sha256(f["content"].encode()):
            out.append(f)
    return out


def actions_of(changed):
    wanted = {f.get("on_change", "none") for f in changed}
    return [a for a in ORDER if a in wanted and a != "none"]


# -- checks before anything changes ---------------------------------------------------------
def _candidate(f):
    """The new content in a private temporary file (for a check), removed by the caller."""
    fd, tmp = tempfile.mkstemp(prefix="node-agent-check.", suffix=os.path.basename(f["path"]))
    with os.fdopen(fd, "w") as fh:
        fh.write(f["content"])
    return tmp


def _run_check(argv, what):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise Refused(f"cannot check {what}: {argv[0]} is not installed") from None
    if out.returncode != 0:
        detail = " ".join((out.stderr or out.stdout).strip().split())[-300:]
        raise Refused(f"{what} fails its check ({' '.join(argv[:2])}): {detail}")


def parse_cnf(text):
    """{setting: value} of a MariaDB option file's server sections (dashes as underscores)."""
    values, section = {}, None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section in GALERA_SECTIONS:
            key, _, value = line.partition("=")
            values[key.strip().replace("-", "_")] = value.strip().strip('"')
    return values


def check_files(changed):
    for f in changed:
        action = f.get("on_change")
        if action == "haproxy:reload" and f["path"].endswith(".cfg"):
            tmp = _candidate(f)
            try:
                _run_check(["haproxy", "-c", "-q", "-f", tmp], f["path"])
            finally:
                os.unlink(tmp)
        elif action == "keepalived:reload":
            tmp = _candidate(f)
            try:
                _run_check(["keepalived", "-t", "-f", tmp], f["path"])
            finally:
                os.unlink(tmp)
        elif action == "galera:settings":
            tmp = _candidate(f)
            try:  # only this file's options: an unknown setting or a bad value is refused
                _run_check(["mariadbd", f"--defaults-file={tmp}", "--user=mysql", "--help", "--verbose"], f["path"])
            finally:
                os.unlink(tmp)


# -- guards: what an action may cost -----------------------------------------------------------
def galera_status():
    try:
        rows = sql("SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_status', 'wsrep_cluster_size', "
                   "'wsrep_local_state_comment', 'wsrep_ready')")
    except (Failed, OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("\t", 1) for line in rows.splitlines() if "\t" in line)


def galera_healthy(expected, status=None):
    status = galera_status() if status is None else status
    return (status.get("wsrep_cluster_status") == "Primary" and status.get("wsrep_local_state_comment") == "Synced"
            and status.get("wsrep_ready") == "ON" and int(status.get("wsrep_cluster_size") or 0) >= expected)


def guard_galera_restart(health):
    expected = int(health["galera_cluster_size"])
    status = galera_status()
    if not galera_healthy(expected, status):
        raise Refused(f"refusing to restart MariaDB: the cluster is not whole (this node "
                      f"{status.get('wsrep_local_state_comment', 'not answering')}/"
                      f"{status.get('wsrep_cluster_status', '-')}, {status.get('wsrep_cluster_size', '?')} of "
                      f"{expected} members): another member is away, and a restart now could cost the cluster "
                      "its quorum; bring every member back first")


def tcp_answers(address, port, probe=None, timeout=2.0):
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            if probe:
                s.sendall(probe)
                return bool(s.recv(64))
            return True
    except OSError:
        return False


def guard_memcached_restart(health):
    peers = health.get("peers") or []
    port = int(health["ports"]["memcached"])
    if peers and not any(tcp_answers(p, port, b"version\r\n") for p in peers):
        raise Refused(f"refusing to restart memcached: no other memcached node of the region answers "
                      f"({', '.join(peers)}); this node is the region's last one")


def replica_status():
    """`replica-node status` as a dict ({} when it does not answer in JSON)."""
    try:
        out = subprocess.run(["python3", path(REPLICA_NODE), "status"], capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return {}


def guard_replica_restart(health):
    """No restart of a region's last healthy replica: another replica of the region must
    answer its health check (200: both threads run, lag within bound), as the proxies ask it."""
    peers = health.get("peers") or []
    names = health.get("peer_names") or {}
    port = int(health["ports"]["galera_health"])
    seen = []
    for peer in peers:
        code = http_status(f"http://{peer}:{port}/")
        if code == 200:
            return
        seen.append(f"{names.get(peer, peer)} ({peer}): " + (f"HTTP {code}" if code else "no answer"))
    raise Refused("refusing to restart MariaDB on this replica: no other replica of the region is healthy ("
                  + ("; ".join(seen) or "it has none") + "); the region's Keystone reads from this one meanwhile. "
                  "Bring the other replica back first (`replica-node status` on it; `replica-node switch` when "
                  "its source is gone), then push again")


# -- install --------------------------------------------------------------------------------
def install(f):
    """Atomically: a new file beside the old one, renamed over it. An existing file keeps
    its owner and mode (the node's own set-up may have narrowed them); a new one gets the
    pushed mode, root's. Never through a link."""
    target = path(f["path"])
    directory = os.path.dirname(target)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(target)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            raise Refused(f"{f['path']} is not a regular file on this node (a link?); remove it first")
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, uid, gid = int(f.get("mode", "0644"), 8), 0, 0
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".node-agent.")
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), mode)
            if os.geteuid() == 0:
                os.fchown(fh.fileno(), uid, gid)
            fh.write(f["content"])
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, target)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # The file is a mount point (bind-mounted in place, as in a container or the lab):
            # a rename cannot replace it, so the new content goes into the mounted file itself.
            os.unlink(tmp)
            fd = os.open(target, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
            with os.fdopen(fd, "w") as fh:
                fh.write(f["content"])
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- actions --------------------------------------------------------------------------------
def galera_delta(changed_files, previous):
    """({setting: new value} changed or added, [settings removed]) across the changed files."""
    old, new = {}, {}
    for f in changed_files:
        old.update(parse_cnf(previous.get(f["path"]) or ""))
        new.update(parse_cnf(f["content"]))
    return {k: v for k, v in new.items() if old.get(k) != v}, [k for k in old if k not in new]


def provider_options(value):
    """{option: value} of a wsrep_provider_options string."""
    out = {}
    for item in value.strip().strip('"').split(";"):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def live_provider_options(old, new):
    """{option: value} to set live when the provider options differ only in options Galera
    takes at run time (the node's vote, pc.weight), else None (a restart is needed)."""
    before, after = provider_options(old or ""), provider_options(new or "")
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    if changed <= GALERA_PROVIDER_LIVE and all(k in after for k in changed):
        return {k: after[k] for k in sorted(changed)}
    return None


def _old_settings(changed_files, previous):
    old = {}
    for f in changed_files:
        old.update(parse_cnf(previous.get(f["path"]) or ""))
    return old


GARB_DEFAULTS = "/etc/default/garb"


def parse_shell_vars(text):
    """{NAME: value} of a shell variables file such as /etc/default/garb."""
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def garbd_peers_only(changed_files, previous):
    """True when the only change for garbd is its peer list (GALERA_NODES in /etc/default/garb)."""
    if [f["path"] for f in changed_files] != [GARB_DEFAULTS] or not previous.get(GARB_DEFAULTS):
        return False
    old, new = parse_shell_vars(previous[GARB_DEFAULTS]), parse_shell_vars(changed_files[0]["content"])
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)} == {"GALERA_NODES"}


def needs_restart(delta, removed, old=None):
    if removed:
        return True
    for key in delta:
        if key in GALERA_LIVE or key in GALERA_AT_START:
            continue
        if key == "wsrep_provider_options" and \
                live_provider_options((old or {}).get(key), delta[key]) is not None:
            continue
        return True
    return False


def galera_settings(changed_files, previous):
    """Changed settings: live with SET GLOBAL when every one of them allows it (returns what
    was set), else None: a (guarded, drained) restart is needed. The peer list is read at the
    next start only: the running member learns its peers from the group."""
    delta, removed = galera_delta(changed_files, previous)
    if not delta and not removed:
        return "no setting changed"
    old = _old_settings(changed_files, previous)
    if needs_restart(delta, removed, old):
        return None
    done = []
    for key, value in sorted(delta.items()):
        if key in GALERA_AT_START:
            done.append(f"{key} at the next start")
        elif key == "wsrep_provider_options":
            for option, v in live_provider_options(old.get(key), value).items():
                sql(f"SET GLOBAL wsrep_provider_options = '{option}={v}'")
                done.append(f"{option}={v}")
        else:
            sql(f"SET GLOBAL {key} = {value if value.replace('.', '').isdigit() else repr(value)}")
            done.append(f"{key}={value}")
    return f"live: {', '.join(done)}"


def wait(predicate, timeout, interval=1.0):
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return False


def http_status(url, timeout=3.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def healthy(role, node_facts, health):
    """The role's own health: what the stack waits for before it pushes the next node."""
    if role == "galera":
        return galera_healthy(int(health["galera_cluster_size"]))
    if role == "proxy":
        return http_status(health["haproxy_monitor"]) == 200 and \
            systemctl("is-active", "keepalived", check=False).returncode == 0
    if role == "memcached":
        return tcp_answers(node_facts["address"], int(health["ports"]["memcached"]), b"version\r\n")
    if role == "keystone":
        if read_bytes(KEY_DIGESTS) is None:
            return False  # the API starts only once the keys are pushed
        return http_status(f"http://{node_facts['address']}:{health['ports']['keystone']}/healthcheck") == 200
    if role == "arbitrator":
        return systemctl("is-active", "garb", check=False).returncode == 0
    if role == "replica":
        return bool(replica_status().get("healthy"))
    return True


def settle_size(health):
    """The cluster size a Galera member must be back in after a push: the topology's, or the
    size before the push when that was smaller. While a region is being added, the topology
    already names members that do not exist yet (its stack runs after this one, see
    changes.py): the push must not cost a member, and cannot wait for those."""
    expected = int(health["galera_cluster_size"])
    before = int(galera_status().get("wsrep_cluster_size") or 0)
    return min(expected, before) if before else expected


def restart_galera(health, log):
    """A planned restart of this member: drained first (its health check fails, the proxies
    mark it down and move its sessions), restarted, back in the cluster, then undrained and
    given the time the proxies need to mark it up again."""
    marker = path(GALERA_DRAIN)
    with open(marker, "w") as fh:
        fh.write(f"{time.time()}\n")
    os.chmod(marker, 0o644)
    try:
        log(f"node-agent: draining this Galera member for {health.get('galera_drain_s', 0)}s")
        time.sleep(float(health.get("galera_drain_s", 0)))
        systemctl("restart", "mariadb", timeout=3600)  # an SST/IST can take long
        if not wait(lambda: galera_healthy(int(health["galera_cluster_size"])), 3600, interval=1.0):
            raise Failed("MariaDB did not come back Synced in a cluster of the full size")
    finally:
        os.unlink(marker)
    time.sleep(float(health.get("galera_undrain_s", 0)))


def restart_replica(files, health, log):
    """A replica's replica.cnf or TLS changed: MariaDB restarted (replication resumes from
    gtid_slave_pos by itself: no skip_slave_start). replica.json alone needs no restart of the
    server. Either way `replica-node start --no-server` (on a seeded replica: its local
    accounts from replica.json, START SLAVE; never a new seed while the marker exists), the
    units that read replica.json restarted, then a bounded wait until `replica-node status`
    says healthy."""
    server = any(f["path"] != REPLICA_CONFIG for f in files)
    if server:
        systemctl("restart", "mariadb", timeout=3600)
    out = subprocess.run(["python3", path(REPLICA_NODE), "start", "--no-server", "--timeout", "600"],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise Failed(f"replica-node start failed: {(out.stderr or out.stdout).strip()[-300:]}")
    for unit in REPLICA_UNITS:
        systemctl("restart", unit)
    bound = float(health.get("replica_settle_s", 900))
    if not wait(lambda: replica_status().get("healthy"), bound, interval=1.0):
        raise Failed(f"this replica does not replicate within {bound:g}s after the "
                     f"{'restart' if server else 'new configuration'}: `replica-node status` says "
                     f"{json.dumps(replica_status(), sort_keys=True)[:300]}")
    return "replica:restart" if server else "replica:restart (replica.json only: MariaDB kept running)"


def run_actions(actions, changed, health, previous, log):
    done = []
    for action in actions:
        files = [f for f in changed if f.get("on_change") == action]
        if action == "systemd:daemon-reload":
            systemctl("daemon-reload")
        elif action == "galera:settings":
            live = galera_settings(files, previous)
            if live is None:
                if "galera:restart" not in actions:
                    restart_galera(health, log)
                    action = "galera:settings (restart)"
            else:
                action = f"galera:settings ({live})"
        elif action == "galera:restart":
            restart_galera(health, log)
        elif action == "galera:users":
            out = subprocess.run(["python3", path("/usr/local/sbin/galera-node"), "init-cluster"], capture_output=True,
                                 text=True, timeout=300)
            if out.returncode != 0:
                raise Failed(f"galera-node init-cluster failed: {out.stderr.strip()[-300:]}")
        elif action == "replica:restart":
            action = restart_replica(files, health, log)
        elif action == "garbd:restart":
            if garbd_peers_only(files, previous):
                # garbd, like a member, learns its peers from the group; a restart would take
                # its vote away meanwhile for nothing.
                action = "garbd:restart (not needed: GALERA_NODES at the next start)"
            else:
                systemctl("restart", "garb")
        elif action == "haproxy:reload":
            systemctl("reload", "haproxy")
        elif action == "keepalived:reload":
            systemctl("reload", "keepalived")
        elif action == "sysctl:apply":
            for f in files:
                subprocess.run(["sysctl", "-q", "-p", path(f["path"])], check=True, capture_output=True, timeout=60)
        elif action == "memcached:restart":
            systemctl("restart", "memcached")
        elif action == "exporter:restart":
            systemctl("restart", "prometheus-mysqld-exporter")
        elif action == "node-exporter:restart":
            systemctl("restart", "prometheus-node-exporter")
        elif action == "keystone:reload":
            if systemctl("is-active", "keystone-api", check=False).returncode == 0:
                systemctl("reload", "keystone-api")
            else:
                action = "keystone:reload (API not started yet)"
        log(f"node-agent: {action}")
        done.append(action)
    return done


def guard(actions, changed, health, previous):
    if "galera:restart" in actions:
        guard_galera_restart(health)
    if "galera:settings" in actions:
        files = [f for f in changed if f.get("on_change") == "galera:settings"]
        if needs_restart(*galera_delta(files, previous), _old_settings(files, previous)):
            guard_galera_restart(health)
    if "memcached:restart" in actions:
        guard_memcached_restart(health)
    if "replica:restart" in actions:
        guard_replica_restart(health)


def record(data):
    applied = {f["path"]: sha256(f["content"].encode()) for f in data["files"]}
    os.makedirs(path(STATE_DIR), mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path(STATE_DIR), prefix=".applied.")
    with os.fdopen(fd, "w") as fh:
        json.dump({"node": data["node"], "files": applied}, fh, indent=2, sort_keys=True)
    os.replace(tmp, path(APPLIED))
    return applied


def cmd_apply(args, stdin=None, log=lambda line: print(line, file=sys.stderr)):
    text = (stdin if stdin is not None else sys.stdin).read()
    os.makedirs(path(STATE_DIR), mode=0o755, exist_ok=True)
    with open(path(LOCK), "a") as lock:
        deadline = time.monotonic() + args.timeout
        while True:  # one push at a time (bounded wait for another one to finish)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Refused("another push is still running on this node") from None
                time.sleep(0.5)
        node_facts = facts()
        data = parse_payload(text, node_facts)
        changed = changes(data)
        actions = actions_of(changed)
        previous = {f["path"]: (read_bytes(f["path"]) or b"").decode(errors="replace") for f in changed}
        check_files(changed)
        health = dict(data.get("health") or {})
        guard(actions, changed, health, previous)
        role = data.get("role")
        if role == "galera":
            health["galera_cluster_size"] = settle_size(health)
        for f in changed:
            install(f)
        try:
            done = run_actions(actions, changed, health, previous, log)
        except (Failed, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise Failed(f"{data['node']}: files installed, but {exc}") from None
        t = time.monotonic()
        if not wait(lambda: healthy(role, node_facts, health), args.timeout):
            raise Failed(f"{data['node']}: not healthy {args.timeout:g}s after the push ({role}); "
                         "check the node before pushing the next one")
        applied = record(data)
        print(json.dumps({"node": data["node"], "changed": [f["path"] for f in changed], "actions": done,
                          "healthy_after_s": round(time.monotonic() - t, 1), "digests": applied}, sort_keys=True))
    return 0


def cmd_check(args):
    data = read_bytes(APPLIED)
    if data is None:
        print(f"node-agent: nothing pushed to this node yet ({APPLIED} is missing)", file=sys.stderr)
        return 1
    recorded = json.loads(data)
    drifted = []
    for p, digest in sorted(recorded["files"].items()):
        current = read_bytes(p)
        if current is None or sha256(current) != digest:
            drifted.append(p)
    if drifted:
        print(f"node-agent: {recorded['node']}: {len(drifted)} file(s) differ from the last push: "
              f"{', '.join(drifted)}; repair with `pulumi up --target <URN of files-{recorded['node']}> --replace` "
              "(`pulumi stack --show-urns` lists it)", file=sys.stderr)
        return 1
    print(json.dumps({"node": recorded["node"], "files": len(recorded["files"]), "drift": []}))
    return 0


def cmd_health(args):
    node_facts = facts() or {}
    data = json.loads(read_bytes(APPLIED) or b"{}")
    health = args.params and json.loads(args.params) or {}
    ok = wait(lambda: healthy(node_facts.get("role"), node_facts, health), args.timeout)
    print(json.dumps({"node": node_facts.get("name"), "healthy": ok, "pushed": bool(data)}))
    return 0 if ok else 1


def cmd_leave(args):
    """The node leaves the Galera cluster for good (its region or the node is removed from the
    topology; the stack runs this before it deletes the VM): a clean shutdown, so the others
    recompute their quorum without its vote instead of waiting for it to come back."""
    node_facts = facts() or {}
    role = node_facts.get("role")
    if role == "galera":
        status = galera_status()
        if status and int(status.get("wsrep_cluster_size") or 0) <= 1 and not args.last:
            raise Refused("this node is the cluster's last member: leaving would end the cluster "
                          "(--last if that is meant)")
        systemctl("stop", "galera-health", check=False)
        systemctl("stop", "mariadb", timeout=3600)
        systemctl("disable", "mariadb", check=False)
        left = f"left the cluster (it had {status.get('wsrep_cluster_size', '?')} members)"
    elif role == "arbitrator":
        systemctl("stop", "garb", timeout=600)
        systemctl("disable", "garb", check=False)
        left = "the arbitrator left the cluster"
    else:
        left = f"nothing to leave ({role} node)"
    print(json.dumps({"node": node_facts.get("name"), "left": left}))
    return 0


def _labels(labels):
    def esc(v):
        return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in sorted(labels.items())) + "}" if labels else ""


def exposition(gauges):
    """Prometheus text format of [(name, help, [(labels, value), ...]), ...]."""
    lines = []
    for name, text, samples in gauges:
        full = f"keystone_multiregion_{name}"
        lines += [f"# HELP {full} {text}", f"# TYPE {full} gauge"]
        lines += [f"{full}{_labels(labels)} {value}" for labels, value in samples]
    return "\n".join(lines) + "\n"


def not_after(pem):
    """The Unix time the first certificate in `pem` expires (openssl), or None."""
    out = subprocess.run(["openssl", "x509", "-noout", "-enddate"], input=pem, capture_output=True, timeout=10)
    text = out.stdout.decode(errors="replace").strip()
    if out.returncode != 0 or not text.startswith("notAfter="):
        return None
    import calendar
    return calendar.timegm(time.strptime(text.split("=", 1)[1].replace("  ", " "), "%b %d %H:%M:%S %Y %Z"))


def addresses_held():
    """Every IPv4 address on this node's interfaces."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10)
    held = set()
    for line in out.stdout.splitlines():
        fields = line.split()
        held.update(address.split("/")[0] for word, address in zip(fields, fields[1:]) if word == "inet")
    return held


def node_metrics():
    """What this node says about itself (see the module's docstring), as gauges."""
    node_facts = facts() or {}
    role, address = node_facts.get("role"), node_facts.get("address")
    ports = node_facts.get("ports") or {}
    applied = json.loads(read_bytes(APPLIED) or b"{}").get("files", {})
    drifted, certs, cache = 0, [], {}
    try:
        known = json.loads(read_bytes(METRICS_CACHE) or b"{}")
    except ValueError:
        known = {}
    for p, digest in sorted(applied.items()):
        data = read_bytes(p)
        if data is None or sha256(data) != digest:
            drifted += 1
        if data and b"-----BEGIN CERTIFICATE-----" in data:
            key = sha256(data)
            cache[key] = known[key] if key in known else not_after(data)  # only the files of now stay
            if cache[key] is not None:
                certs.append(({"path": p}, cache[key]))
    gauges = [
        ("push_recorded", "1 when the region stack has pushed this node's files (node-agent apply)",
         [({}, 1 if applied else 0)]),
        ("files_drifted", "Pushed files that differ from the last push (node-agent check names them)",
         [({}, drifted)]),
        ("certificate_expiry_timestamp_seconds", "When the first certificate of each pushed PEM file expires",
         certs),
    ]
    if role == "proxy":
        held = addresses_held()
        gauges.append(("vip_held", "1 when this proxy holds the VIP (keepalived)",
                       [({"vip": v["name"], "address": v["address"]}, 1 if v["address"] in held else 0)
                        for v in node_facts.get("vips", [])]))
    if role == "memcached":
        up = tcp_answers(address, int(ports.get("memcached", 11211)), b"version\r\n")
        gauges.append(("memcached_up", "1 when memcached answers on this node", [({}, 1 if up else 0)]))
    if role == "keystone":
        code = http_status(f"http://{address}:{ports.get('keystone', 5000)}/healthcheck")
        gauges.append(("keystone_healthy", "1 when Keystone's /healthcheck answers 200 on this node",
                       [({}, 1 if code == 200 else 0)]))
        if read_bytes(KEY_DIGESTS) is not None:
            out = subprocess.run(["python3", path(KEYSTONE_NODE), "key-check"], capture_output=True, text=True,
                                 timeout=60)
            gauges.append(("keys_drifted", "Key repositories (Fernet, credential) that differ from what the "
                           "stack pushed (keystone-node key-check)", [({}, out.stderr.count("DRIFT:"))]))
    if role == "galera":
        gauges += backup_gauges()
    gauges.append(("metrics_timestamp_seconds", "When node-agent last wrote these metrics", [({}, round(time.time()))]))
    return gauges, cache


def backup_gauges():
    """The region's backups, as its backup node sees them (galera-node backup records its runs)."""
    try:
        plan = json.loads(read_bytes(BACKUP_PLAN) or b"{}")
        status = json.loads(read_bytes(BACKUP_STATUS) or b"{}")
    except ValueError:
        plan, status = {}, {}
    if not plan.get("configured") or not plan.get("designated"):
        return [("backup_node", "1 on the region's backup node (its first Galera node)", [({}, 0)])]
    gauges = [("backup_node", "1 on the region's backup node (its first Galera node)", [({}, 1)])]
    try:
        pushed = os.stat(path(BACKUP_SECRETS)).st_mtime if os.path.getsize(path(BACKUP_SECRETS)) else None
    except OSError:
        pushed = None
    since = status.get("last_success") or pushed
    if status.get("last_success"):
        gauges.append(("backup_last_success_timestamp_seconds", "When the region's last good backup finished",
                       [({}, round(status["last_success"]))]))
    if since:
        gauges.append(("backup_counted_from_timestamp_seconds", "The last good backup, or before the first one "
                       "the time the stack pushed the object store's credentials (backups possible from then on)",
                       [({}, round(since))]))
    if "last_result" in status:
        gauges.append(("backup_last_run_ok", "1 when the last backup run succeeded (galera-node backup)",
                       [({}, 1 if status["last_result"] == "ok" else 0)]))
    return gauges


def cmd_metrics(args):
    gauges, cache = node_metrics()
    # Written as pushed files are (install: beside, then renamed): node_exporter never reads
    # half a file.
    install({"path": args.out or METRICS_FILE, "content": exposition(gauges), "mode": "0644"})
    install({"path": METRICS_CACHE, "content": json.dumps(cache), "mode": "0644"})
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="node-agent", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply")
    apply.add_argument("--timeout", type=float, default=1800)
    sub.add_parser("check")
    health = sub.add_parser("health")
    health.add_argument("--timeout", type=float, default=60)
    health.add_argument("--params", help="JSON health parameters (as in a payload)")
    metrics = sub.add_parser("metrics", help="write this node's metrics for node_exporter's textfile collector")
    metrics.add_argument("--out", help=f"another file than {METRICS_FILE}")
    leave = sub.add_parser("leave", help="leave the Galera cluster for good, before the VM is deleted")
    leave.add_argument("--last", action="store_true", help="even as the cluster's last member")
    args = parser.parse_args(argv)
    try:
        return {"apply": cmd_apply, "check": cmd_check, "health": cmd_health,
                "leave": cmd_leave, "metrics": cmd_metrics}[args.command](args)
    except Refused as exc:
        print(f"node-agent: refused, nothing changed: {exc}", file=sys.stderr)
        return 2
    except Failed as exc:
        print(f"node-agent: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
