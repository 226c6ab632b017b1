"""Proxy drills on the running lab: each breaks something in front of Keystone or the
database, measures what the clients saw and how long the proxies took, and puts the lab
back as it was (links up, daemons restarted, VIPs on their masters).

    a. VIP moves: the proxy holding a VIP loses its link / stops keepalived / loses HAProxy
    b. Database failover: the Galera node taking the writes dies (SIGKILL of mariadbd)
    c. Keystone failover: every Keystone node of a region dies; the other regions answer

Clients run inside the lab's namespaces (a Keystone node of the region) as one process
each, looping over requests bounded in count and time, each request on a new connection,
and report every attempt with CLOCK_MONOTONIC timestamps (the same clock as this
process), so the fault's instant and the clients' view line up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from keystone_multiregion.roles.proxy import HAPROXY_DOWN_FILE, REGION_HEADER
from keystone_multiregion.security import PORTS, security_rules
from keystone_multiregion.topology import duration_seconds

from .drills import DrillResult
from .layers import proxy as layer
from .util import LabError


class DrillCannotRun(Exception):
    """The lab lacks what the drill needs (said in the message); nothing was changed. A
    drill that cannot run has failed: it is reported as a failure with this reason."""


# Requests to an HTTPS endpoint from inside a namespace: each on a new connection, TLS
# verified against a CA file for a host name (SNI). One JSON object per attempt. Bounded by
# a duration and a count; ends early once `stop_file` exists.
_HTTPS_LOOP = r"""
import json, os, socket, ssl, sys, time
cfg = json.loads(sys.stdin.readline())  # on stdin: it may carry a password
ctx = ssl.create_default_context(cafile=cfg["ca"])
body = json.dumps(cfg["body"]).encode() if cfg.get("body") is not None else b""
end = time.monotonic() + cfg["duration"]
out = []
for _ in range(cfg["max"]):
    if time.monotonic() >= end or (cfg.get("stop_file") and os.path.exists(cfg["stop_file"])):
        break
    t0 = time.monotonic()
    rec = {"t0": t0}
    try:
        with socket.create_connection((cfg["address"], cfg["port"]), timeout=cfg["timeout"]) as raw:
            with ctx.wrap_socket(raw, server_hostname=cfg["hostname"]) as tls:
                head = f"{cfg['method']} {cfg['path']} HTTP/1.1\r\nHost: {cfg['hostname']}\r\nConnection: close\r\n"
                for k, v in cfg.get("headers", {}).items():
                    head += f"{k}: {v}\r\n"
                if body:
                    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                tls.sendall(head.encode() + b"\r\n" + body)
                data = b""
                while True:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        header, _, payload = data.partition(b"\r\n\r\n")
        lines = header.decode(errors="replace").split("\r\n")
        rec["status"] = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else None
        if cfg.get("want_header"):
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == cfg["want_header"].lower():
                    rec["header"] = v.strip()
    except Exception as exc:
        rec["status"] = None
        rec["error"] = f"{type(exc).__name__}: {exc}"[:200]
    rec["t1"] = time.monotonic()
    out.append(rec)
    time.sleep(max(0.0, cfg["interval"] - (rec["t1"] - t0)))
print(json.dumps(out))
"""

# Statements through the database frontend from inside a namespace: each a new client
# connection (`mariadb -e`), bounded by a timeout. One JSON object per attempt.
_DB_LOOP = r"""
import json, os, subprocess, sys, time
cfg = json.loads(sys.stdin.readline())  # on stdin: it may carry a password
end = time.monotonic() + cfg["duration"]
out = []
for _ in range(cfg["max"]):
    if time.monotonic() >= end or (cfg.get("stop_file") and os.path.exists(cfg["stop_file"])):
        break
    t0 = time.monotonic()
    rec = {"t0": t0}
    try:
        cp = subprocess.run(["mariadb", "--defaults-file=" + cfg["cnf"], "-h", cfg["address"], "-N", "-B",
                             "-e", cfg["statement"]], capture_output=True, text=True, timeout=cfg["timeout"])
        rec["ok"] = cp.returncode == 0
        rec["out" if rec["ok"] else "error"] = (cp.stdout.strip() if rec["ok"] else
                                                (cp.stderr.strip().splitlines() or ["rc %d" % cp.returncode])[-1][:200])
    except subprocess.TimeoutExpired:
        rec["ok"] = False
        rec["error"] = "timeout"
    rec["t1"] = time.monotonic()
    out.append(rec)
    time.sleep(max(0.0, cfg["interval"] - (rec["t1"] - t0)))
print(json.dumps(out))
"""


class Probe:
    """A client loop running in the background inside a lab namespace."""

    def __init__(self, dep, client: str, script: str, cfg: dict):
        self.cfg = cfg
        self.started = time.monotonic()
        # The configuration on stdin, not in argv (every user sees argv): a request body may
        # carry the admin password.
        self.proc = subprocess.Popen(["ip", "netns", "exec", dep.lab.net.netns(client), sys.executable, "-c",
                                      script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.proc.stdin.write(json.dumps(cfg) + "\n")
        self.proc.stdin.flush()

    def results(self) -> list[dict]:
        try:
            out, err = self.proc.communicate(timeout=self.cfg["duration"] + self.cfg["timeout"] + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise LabError("a drill client did not finish in time")
        if self.proc.returncode != 0:
            raise LabError(f"a drill client failed: {err.strip()[-500:]}")
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _sec(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def outage(records: list[dict], fault_at: float, ok) -> dict:
    """What the clients saw after the fault: failed attempts, the first success (seconds
    from the fault to the end of that attempt) and the longest run without a success."""
    after = [r for r in records if r["t1"] >= fault_at]
    failed = [r for r in after if not ok(r)]
    first_ok = next((r for r in after if ok(r) and r["t0"] >= fault_at), None)
    last_ok_before = max((r["t1"] for r in records if ok(r) and r["t1"] < fault_at), default=None)
    first_ok_after = first_ok["t1"] if first_ok else None
    return {"attempts_after_fault": len(after), "failed": len(failed),
            "first_success_s": _sec(first_ok_after - fault_at) if first_ok else None,
            "gap_s": _sec(first_ok_after - last_ok_before) if first_ok and last_ok_before else None,
            "errors": sorted({(r.get("error") or f"HTTP {r.get('status')}") for r in failed})[:5]}


class ProxyDrills:
    def __init__(self, dep, region: str | None = None):
        self.dep = dep
        self.topo = dep.topo
        serving = [r.name for r in self.topo.regions if self.topo.vips(r.name)]
        self.region = region or serving[0]
        self.others = [r for r in serving if r != self.region]
        self.proxies = [p.name for p in self.topo.nodes(self.region, "proxy")]
        self.client = self.topo.nodes(self.region, "keystone")[0].name
        self.hostname = self.topo.region(self.region).public_hostname

    # -- helpers ---------------------------------------------------------------------------
    def vips(self, kind: str | None = None):
        return self.topo.vips(self.region, kind)

    def settle(self, timeout: float = 30) -> float | None:
        """Seconds until every VIP of the region is on its master again (None: not in time)."""
        t = time.monotonic()
        if layer.wait(lambda: layer.vips_settled(self.dep, self.region), timeout, 0.1):
            return _sec(time.monotonic() - t)
        return None

    def https_probe(self, vip, duration: float, path: str = "/v3", interval: float = 0.05, method: str = "GET",
                    headers: dict | None = None, body=None, timeout: float = 3.0, client: str | None = None,
                    want_header: str | None = None, stop_file: str | None = None) -> Probe:
        cfg = {"address": vip.address, "port": PORTS["https"], "hostname": self.hostname,
               "ca": layer.public_ca_file(self.dep), "path": path, "method": method, "headers": headers or {},
               "body": body, "duration": duration, "interval": interval, "timeout": timeout,
               "max": int(duration / max(interval, 0.01)) + 10, "want_header": want_header, "stop_file": stop_file}
        return Probe(self.dep, client or self.client, _HTTPS_LOOP, cfg)

    def _answered(self, r: dict) -> bool:
        """The HTTPS frontend answered (TLS verified and an HTTP status came back)."""
        return r.get("status") is not None

    def _vip_move(self, name: str, vips, fault, repair, to: str, timeout: float = 20,
                  observe: float = 8.0) -> DrillResult:
        """Apply `fault`, measure until `to` holds every VIP in `vips` and clients get answers
        again, then `repair` and measure until the VIPs are back on their masters."""
        problems = []
        if not layer.vips_settled(self.dep, self.region):
            raise DrillCannotRun(f"the VIPs of {self.region} are not on their masters: "
                               f"{layer.vip_holders(self.dep, self.region)}")
        probe = self.https_probe(vips[0], duration=1.0 + observe)
        time.sleep(1.0)
        t_fault = time.monotonic()
        moved: dict[str, float | None] = {}
        try:
            fault()
            pending = {v.address for v in vips}
            deadline = t_fault + timeout
            while pending and time.monotonic() < deadline:
                held = layer.vip_holders(self.dep, self.region)
                for addr in list(pending):
                    if to in held[addr]:
                        moved[addr] = _sec(time.monotonic() - t_fault)
                        pending.discard(addr)
                time.sleep(0.05)
            for addr in pending:
                moved[addr] = None
                problems.append(f"{addr} did not move to {to} within {timeout}s")
        finally:
            try:
                records = probe.results()
            finally:  # the lab goes back as it was, whatever happened
                t_repair = time.monotonic()
                repair()
                back = self.settle()
        if back is None:
            problems.append(f"the VIPs did not return to their masters: {layer.vip_holders(self.dep, self.region)}")
        seen = outage(records, t_fault, self._answered)
        if seen["first_success_s"] is None:
            problems.append(f"no client request on {vips[0].address} was answered after the fault")
        after = self.https_probe(vips[0], duration=0.5, interval=0.1)
        if not any(self._answered(r) for r in after.results()):
            problems.append(f"{vips[0].address} does not answer after the repair")
        measured = {"vips": {v.name: v.address for v in vips}, "moved_to": to, "move_s": moved,
                    "client_first_answer_s": seen["first_success_s"], "client_gap_s": seen["gap_s"],
                    "client_failed_requests": seen["failed"], "client_requests": seen["attempts_after_fault"],
                    "client_errors": seen["errors"], "back_on_master_s": back,
                    "repair_started_s": _sec(t_repair - t_fault)}
        return DrillResult(name, not problems, measured, problems)

    def _other(self, proxy: str) -> str:
        return next(p for p in self.proxies if p != proxy)

    # -- a. VIP moves --------------------------------------------------------------------------
    def drill_vip_link_down(self) -> DrillResult:
        """The proxy holding the first public VIP loses its link (a dead VM): its addresses
        (that VIP and every other it masters) move to the other proxy."""
        master = self.vips("public")[0].master
        vips = [v for v in self.vips() if v.master == master]
        net = self.dep.lab.net
        return self._vip_move(f"a1. {master} loses its link: its VIPs move to {self._other(master)}", vips,
                              lambda: net.link_down(master), lambda: net.link_up(master), self._other(master))

    def drill_vip_keepalived_stop(self) -> DrillResult:
        """keepalived stops gracefully on the master of the second public VIP (it sends a
        priority-0 advert): the other proxy takes over at once."""
        vip = self.vips("public")[-1]
        master = vip.master
        vips = [v for v in self.vips() if v.master == master]
        procs = self.dep.lab.procs
        return self._vip_move(f"a2. keepalived stops on {master}: its VIPs move to {self._other(master)}", vips,
                              lambda: procs.stop(master, "keepalived", timeout=10),
                              lambda: layer.start_keepalived(self.dep, master), self._other(master))

    def drill_vip_haproxy_killed(self) -> DrillResult:
        """HAProxy dies (SIGKILL of its master process) on the master of the first public
        VIP: haproxy.service's ExecStopPost (our drop-in; the lab runs it as systemd does when
        the process ends) writes 1 to the file keepalived tracks, its instances go to FAULT at
        once and release the addresses to the other proxy."""
        master = self.vips("public")[0].master
        vips = [v for v in self.vips() if v.master == master]
        procs = self.dep.lab.procs

        down_file = procs.host_path(master, HAPROXY_DOWN_FILE)
        written: dict[str, float | None] = {}

        def read_down() -> str | None:
            try:
                with open(down_file) as fh:
                    return fh.read().strip()
            except FileNotFoundError:
                return None

        def fault():
            t = time.monotonic()
            procs.kill(master, "haproxy")
            written["stop_post_s"] = _sec(time.monotonic() - t) if layer.wait(lambda: read_down() == "1", 10, 0.01) \
                else None

        result = self._vip_move(f"a3. HAProxy dies on {master}: keepalived gives its VIPs to {self._other(master)}",
                                vips, fault, lambda: layer.restart(self.dep, master, "haproxy"), self._other(master))
        # ExecStopPost wrote 1 when the process ended; ExecStartPost 0 when it ran again.
        result.measured.update(written, down_file_after_repair=read_down())
        if written.get("stop_post_s") is None:
            result.problems.append(f"{HAPROXY_DOWN_FILE} on {master} never read 1 after HAProxy died")
        if result.measured["down_file_after_repair"] != "0":
            result.problems.append(f"{HAPROXY_DOWN_FILE} on {master} reads "
                                   f"{result.measured['down_file_after_repair']!r} after HAProxy started again")
        result.ok = not result.problems
        return result

    # -- b. database failover ------------------------------------------------------------------
    def _remote_db_allowed(self) -> list[str]:
        """Why the other regions' Galera nodes cannot back up this region's frontend
        (security group rules missing), or [] if they can."""
        missing = []
        for other in self.others:
            rules = security_rules(self.topo, other)
            for proxy in self.topo.nodes(self.region, "proxy"):
                for port in (PORTS["mysql"], PORTS["galera_health"]):
                    if not any(r.group == "galera" and r.protocol == "tcp" and r.port == port
                               and (r.remote == f"{proxy.address}/32" or r.remote == self.topo.region(self.region).cidr)
                               for r in rules):
                        missing.append(f"galera tcp {port} from {proxy.name} in {other}")
        return missing

    def drill_db_failover(self, max_seconds: float = 20, interval: float = 0.1) -> DrillResult:
        """Kill (SIGKILL) the Galera node taking this region's writes while a client writes
        through the internal VIP: the frontend moves to the next node; count the failed
        statements; restart the node and measure the way back."""
        dep = self.dep
        vip = self.vips("internal")[0]
        local = [n.name for n in self.topo.nodes(self.region, "galera")]
        writer = local[0]
        states = {p: layer.server_states(dep, p) for p in self.proxies}
        if any(s is None for s in states.values()):
            raise DrillCannotRun(f"HAProxy does not answer on every proxy of {self.region}")
        nexts = {p: [n for n, st in s["galera"].items() if n != writer and st["status"].startswith("UP")]
                 for p, s in states.items()}
        if not all(nexts.values()):
            missing = self._remote_db_allowed()
            if len(local) == 1 and missing:
                raise DrillCannotRun(
                    f"{self.region} has one Galera node and its proxies may not reach the other regions' nodes "
                    f"(security groups lack: {'; '.join(missing[:4])}): no node could take over")
            raise LabError(f"no backup database server is UP on {self.region}'s proxies: {states}")
        cnf = layer.ensure_check_user(dep)
        layer.ensure_drill_table(dep, writer)
        statement = (f"INSERT INTO {layer.DRILL_DB}.ticks (node) VALUES (@@wsrep_node_name); "
                     "SELECT LAST_INSERT_ID(), @@wsrep_node_name")
        cfg = {"cnf": cnf, "address": vip.address, "statement": statement, "duration": max_seconds,
               "interval": interval, "timeout": 5.0, "max": int(max_seconds / interval) + 10}
        # Writes wait for Galera to evict the dead node (evs.suspect_timeout) before they
        # commit anywhere; reads show the proxies' own failover. Both, side by side.
        writes = Probe(dep, self.client, _DB_LOOP, cfg)
        reads = Probe(dep, self.client, _DB_LOOP, {**cfg, "statement": "SELECT @@wsrep_node_name"})
        problems = []
        time.sleep(1.5)
        t_kill = time.monotonic()
        try:
            dep.lab.procs.kill(writer, "mariadb")
            down = layer.wait(lambda: all(layer.active_server(layer.server_states(dep, p) or {}, "galera") not in
                                          (writer, None) for p in self.proxies), timeout=15, interval=0.05)
            marked_down_s = _sec(time.monotonic() - t_kill) if down else None
            records, read_records = writes.results(), reads.results()
        finally:
            writes.stop()
            reads.stop()
            t_restart = time.monotonic()
            if not dep.lab.procs.is_alive(writer, "mariadb"):
                dep.start_galera(writer)  # rejoins by IST; the lab goes back as it was
            rejoined_s = _sec(time.monotonic() - t_restart)
        # The frontend returns to the local node once it is Synced again (rise 3 checks).
        t_back = time.monotonic()
        back = layer.wait(lambda: layer.db_query(dep, self.client, vip.address, "SELECT @@wsrep_node_name")
                          == (True, writer), timeout=60, interval=0.5)
        back_s = _sec(time.monotonic() - t_back) if back else None
        ok = lambda r: r.get("ok")  # noqa: E731
        seen = outage(records, t_kill, ok)
        seen_reads = outage(read_records, t_kill, ok)
        nodes_before = sorted({r["out"].split()[-1] for r in records if ok(r) and r["t1"] < t_kill})
        nodes_after = [r["out"].split()[-1] for r in records if ok(r) and r["t0"] >= t_kill]
        acknowledged = [int(r["out"].split()[0]) for r in records if ok(r)]
        stored = dep.sql(self.topo.nodes(self.others[0], "galera")[0].name,
                         f"SELECT id FROM {layer.DRILL_DB}.ticks", check=False)
        stored_ids = {int(x) for x in stored.stdout.split()} if stored.returncode == 0 else set()
        lost = [i for i in acknowledged if i not in stored_ids]
        dep.sql(writer, f"DROP DATABASE IF EXISTS {layer.DRILL_DB}", check=False)
        suspect = duration_seconds(self.topo.galera.evs_suspect_timeout, "galera.evs_suspect_timeout")
        if nodes_before != [writer]:
            problems.append(f"before the kill the writes went to {nodes_before}, not {writer}")
        if not nodes_after or writer in nodes_after[:1]:
            problems.append("no statement succeeded on another node after the kill")
        if len(set(nodes_after[:5])) > 1:
            problems.append(f"writes after the kill went to several nodes: {nodes_after[:5]}")
        # Outcomes only: a read and a write answered after the kill within the drill's bounded
        # observation; how long it took is reported (the bench judges speed, not the drill).
        if seen_reads["first_success_s"] is None:
            problems.append(f"no read succeeded after the kill within {max_seconds:g}s")
        if seen["first_success_s"] is None:
            problems.append(f"no write succeeded after the kill within {max_seconds:g}s "
                            f"(Galera's suspect timeout is {suspect:g}s)")
        if lost:
            problems.append(f"{len(lost)} acknowledged writes are missing: {lost[:5]}")
        if back_s is None:
            problems.append(f"the frontend did not return to {writer} after its restart")
        measured = {"killed": writer, "taken_over_by": nodes_after[0] if nodes_after else None,
                    "writes": len(records), "failed_writes": seen["failed"],
                    "first_write_s": seen["first_success_s"], "write_errors": seen["errors"],
                    "reads": len(read_records), "failed_reads": seen_reads["failed"],
                    "first_read_s": seen_reads["first_success_s"], "read_errors": seen_reads["errors"],
                    "galera_suspect_timeout_s": suspect, "proxies_marked_down_s": marked_down_s,
                    "acknowledged_writes": len(acknowledged), "lost_writes": len(lost),
                    "rejoin_s": rejoined_s, "back_to_local_s": back_s}
        return DrillResult(f"b. the Galera node taking {self.region}'s writes dies: the frontend moves on",
                           not problems, measured, problems)

    def drill_db_partition(self, hold: float = 20, interval: float = 0.2) -> DrillResult:
        """Cut the region off the others: its Galera node leaves the Primary component, the
        `galera` backend has no usable server left, and the frontend falls back to the local
        node (`galera_degraded`): reads go on (wsrep_dirty_reads), writes are refused by
        Galera itself. After the heal, writes come back through the normal backend."""
        dep, net = self.dep, self.dep.lab.net
        vip = self.vips("internal")[0]
        writer = self.topo.nodes(self.region, "galera")[0].name
        if not layer.db_query(dep, self.client, vip.address, "SELECT 1")[0]:
            raise DrillCannotRun(f"the database frontend of {self.region} does not answer")
        cnf = layer.ensure_check_user(dep)
        layer.ensure_drill_table(dep, writer)
        status = ("(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                  "WHERE VARIABLE_NAME='wsrep_cluster_status')")
        cfg = {"cnf": cnf, "address": vip.address, "duration": 1 + hold, "interval": interval, "timeout": 5.0,
               "max": int((1 + hold) / interval) + 10}
        before = {p: (layer.server_states(dep, p) or {}).get("galera_degraded", {}) for p in self.proxies}
        reads = Probe(dep, self.client, _DB_LOOP, {**cfg, "statement": f"SELECT @@wsrep_node_name, {status}"})
        writes = Probe(dep, self.client, _DB_LOOP, {**cfg, "statement": f"INSERT INTO {layer.DRILL_DB}.ticks (node) "
                                                                       "VALUES (@@wsrep_node_name)"})
        hosts = net.region_hosts(self.region)
        time.sleep(1.0)
        t_cut = time.monotonic()
        try:
            net.partition_region(self.region)
            read_records, write_records = reads.results(), writes.results()
            during = {p: (layer.server_states(dep, p) or {}).get("galera_degraded", {}) for p in self.proxies}
        finally:
            reads.stop()
            writes.stop()
            t_heal = time.monotonic()
            net.heal(hosts)
        write_back = layer.wait(lambda: layer.db_query(dep, self.client, vip.address, f"INSERT INTO {layer.DRILL_DB}"
                                                       ".ticks (node) VALUES (@@wsrep_node_name)")[0], 90, 0.5)
        write_back_s = _sec(time.monotonic() - t_heal) if write_back else None
        normal = layer.wait(lambda: all(layer.active_server(layer.server_states(dep, p) or {}, "galera") == writer
                                        for p in self.proxies), 60, 0.5)
        dep.sql(writer, f"DROP DATABASE IF EXISTS {layer.DRILL_DB}", check=False)
        ok = lambda r: r.get("ok")  # noqa: E731
        dirty = [r for r in read_records if ok(r) and r["t0"] > t_cut and r["out"].split()[-1] != "Primary"]
        refused = [r for r in write_records if not ok(r) and r["t0"] > t_cut]
        first_refused = min((r["t1"] for r in refused), default=None)
        failed_reads = [r for r in read_records if not ok(r)]
        degraded_sessions = sum(st.get("stot", 0) for p in self.proxies for st in during[p].values()) - \
            sum(st.get("stot", 0) for p in self.proxies for st in before[p].values())
        problems = []
        if not dirty:
            problems.append("no read was answered by a non-Primary node during the partition")
        if degraded_sessions <= 0:
            problems.append("the galera_degraded backend was never used")
        if not refused or not any("1047" in (r.get("error") or "") for r in refused):
            problems.append(f"writes were not refused by Galera during the partition: {refused[:2]}")
        if write_back_s is None:
            problems.append("writes did not come back after the heal")
        if not normal:
            problems.append(f"the frontend did not return to {writer} through the galera backend")
        measured = {"cut": self.region, "held_s": _sec(t_heal - t_cut), "reads": len(read_records),
                    "failed_reads": len(failed_reads),
                    "read_errors": sorted({r.get("error") for r in failed_reads})[:3],
                    "dirty_reads": len(dirty), "degraded_sessions": degraded_sessions,
                    "writes_refused_after_s": _sec(first_refused - t_cut) if first_refused else None,
                    "refused_writes": len(refused),
                    "write_error": (refused[-1].get("error") if refused else None),
                    "writes_back_after_heal_s": write_back_s}
        return DrillResult(f"b2. {self.region} cut off: the database frontend serves local dirty reads, "
                           "Galera refuses the writes", not problems, measured, problems)

    # -- c. Keystone failover ------------------------------------------------------------------
    def keystone_processes(self) -> dict[str, list[dict]]:
        """{keystone node: [its running process records]} in this region."""
        out = {}
        for node in self.topo.nodes(self.region, "keystone"):
            out[node.name] = [rec for rec in self.dep.lab.procs.processes(node.name).values()
                              if self.dep.lab.procs.is_alive(node.name, rec["name"])]
        return out

    def _admin_token(self, vip) -> str:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": self.dep.secrets()["keystone_admin_password"]}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
        probe = self.https_probe(vip, duration=0.1, interval=1, path="/v3/auth/tokens", method="POST", body=body,
                                 timeout=30, want_header="X-Subject-Token")
        (rec, *_) = probe.results()
        if rec.get("status") != 201 or not rec.get("header"):
            raise LabError(f"could not get a token through {vip.address}: {rec}")
        return rec["header"]

    def drill_keystone_failover(self, kill_after: float = 1.5, observe: float = 10.0,
                                interval: float = 0.05) -> DrillResult:
        """Every Keystone node of the region dies (SIGKILL of its whole process group) while
        a client validates a token through the region's public VIP: the proxies send the
        requests to the other regions' public endpoints (backup servers). Fails on a failed
        validation or when no other region answered; the time to the first success is
        reported, never judged (speed targets live in the benchmark)."""
        dep = self.dep
        running = self.keystone_processes()
        if not any(running.values()):
            raise DrillCannotRun(f"Keystone is not running in the lab (no process on "
                               f"{', '.join(running)}): this drill runs once the Keystone layer starts it")
        for node in running:
            health = f"http://{self.topo.node(node).address}:{PORTS['keystone']}/healthcheck"
            code = dep.http_status(self.proxies[0], health)
            if code != 200:
                raise DrillCannotRun(f"{node} does not answer /healthcheck (HTTP {code})")
        states = {p: layer.server_states(dep, p) for p in self.proxies}
        backups_up = {p: [n for n, st in (s or {}).get("keystone", {}).items() if st["backup"]
                          and st["status"].startswith("UP")] for p, s in states.items()}
        if not all(backups_up.values()):
            cfg = open(dep.lab.procs.host_path(self.proxies[0], "/etc/haproxy/haproxy.cfg")).read()
            from keystone_multiregion.roles.proxy import SYSTEM_CA_BUNDLE
            if f"ca-file {SYSTEM_CA_BUNDLE}" in cfg:
                raise DrillCannotRun("the other regions' endpoints (backup servers) are DOWN: their development "
                                   "certificates cannot be verified, because the proxies' secrets carry no "
                                   "public_ca_cert (keystone_multiregion/secrets.py must pass it on)")
            raise LabError(f"no backup server of the keystone backend is UP: {states}")
        vip = self.vips("public")[0]
        token = self._admin_token(vip)
        before = {p: {n: st["stot"] for n, st in states[p]["keystone"].items()} for p in self.proxies}
        # Each answer's X-Keystone-Region: which region served it, as the rollout gate sees it.
        probe = self.https_probe(vip, duration=kill_after + observe, interval=interval, path="/v3/auth/tokens",
                                 headers={"X-Auth-Token": token, "X-Subject-Token": token}, timeout=10,
                                 want_header=REGION_HEADER)
        records: list[dict] = []
        killed = {}
        time.sleep(kill_after)
        t_kill = time.monotonic()
        try:
            for node, recs in running.items():
                for rec in recs:
                    killed[(node, rec["name"])] = rec["argv"]
                    try:
                        os.killpg(rec["pgid"], signal.SIGKILL)  # the lab's own process group (uwsgi and workers)
                    except ProcessLookupError:
                        pass
            records = probe.results()
        finally:
            probe.stop()
            after_states = {p: layer.server_states(dep, p) or {} for p in self.proxies}
            # Put Keystone back: the recorded command of every killed process.
            for (node, name), argv in killed.items():
                dep.lab.procs.stop(node, name, timeout=5)
                url = f"http://{self.topo.node(node).address}:{PORTS['keystone']}/v3"
                dep.lab.procs.start(node, name, argv, ready_timeout=120,
                                    ready=lambda n=node, u=url: dep.http_status(n, u, timeout=2) == 200)
        def local_up() -> bool:
            for p in self.proxies:
                servers = (layer.server_states(dep, p) or {}).get("keystone") or {}
                local = [st for st in servers.values() if not st["backup"]]
                if not local or not all(st["status"].startswith("UP") for st in local):
                    return False
            return True

        local_back = layer.wait(local_up, timeout=30, interval=0.2)
        ok = lambda r: r.get("status") == 200  # noqa: E731
        seen = outage(records, t_kill, ok)
        served = {p: {n: after_states[p].get("keystone", {}).get(n, {}).get("stot", 0) - before[p][n]
                      for n in before[p]} for p in self.proxies}
        by_backup = {n: c for p in self.proxies for n, c in served[p].items() if c and n.startswith("vip-")}
        # Who answered the validations sent after the kill, by the proxies' header.
        by_region: dict[str, int] = {}
        for r in records:
            if r["t0"] >= t_kill and ok(r):
                name = r.get("header") or "(no header)"
                by_region[name] = by_region.get(name, 0) + 1
        problems = []
        if seen["failed"]:
            problems.append(f"{seen['failed']} validations failed after the kill: {seen['errors']}")
        if seen["first_success_s"] is None:
            problems.append("no validation succeeded after the kill")
        if not by_backup:
            problems.append("no request went to another region's endpoint")
        if not set(by_region) & set(self.others):
            problems.append(f"no validation after the kill was named ({REGION_HEADER}) after another region: "
                            f"{by_region}")
        if not local_back:
            problems.append("the region's Keystone nodes did not come back UP on its proxies")
        measured = {"killed": sorted(running), "validations": len(records),
                    "after_kill": seen["attempts_after_fault"], "failed": seen["failed"],
                    "first_success_s": seen["first_success_s"], "gap_s": seen["gap_s"],
                    "served_by_backups": by_backup, "answered_by_region": by_region, "errors": seen["errors"],
                    "max_latency_ms": round(max(((r["t1"] - r["t0"]) * 1000 for r in records if r["t0"] >= t_kill),
                                                default=0), 1)}
        return DrillResult(f"c. every Keystone node of {self.region} dies: {', '.join(self.others)} answer",
                           not problems, measured, problems)

    def run_all(self, log=print) -> list[DrillResult]:
        results = []
        for drill in (self.drill_vip_link_down, self.drill_vip_keepalived_stop, self.drill_vip_haproxy_killed,
                      self.drill_db_failover, self.drill_db_partition, self.drill_keystone_failover):
            try:
                result = drill()
            except DrillCannotRun as exc:
                result = DrillResult(f"{drill.__name__} could not run", False, {}, [str(exc)])
            log(result.line())
            results.append(result)
        return results
