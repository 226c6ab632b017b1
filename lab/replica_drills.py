"""Replica drills (#15) on a lab with a replica region (lab/topology-region-r.yaml): lab-a/b/c
form the core Galera cluster, lab-r reads from two asynchronous replicas and sends writes to
the core.

    R1  lab-r validates tokens locally (0 bytes from its Keystone and memcached nodes to other
        regions, no request from its proxies to another region's endpoint), and sees a user
        created in the core after a measured lag
    R2  a write made through lab-r's endpoint lands in the core and is seen everywhere; which
        Keystone operations write when made in lab-r, and who wrote them
    R3  a replica's source core node dies: the replica's watch switches it to another core
        node; no acknowledged transaction missed (rows and GTID positions compared)
    R4  lab-r cut off keeps validating and refuses writes with a clear 503; after the heal it
        catches up by itself
    R5  the core's commit latency with lab-r near and at 50 ms one way (figures only)
    R6  the bound for revocations and changes in lab-r: replication lag + token cache

Requests go from a region's first proxy to the region's internal endpoint (its proxies'
internal VIP), so a replica region's write routing is what answers. Every wait is bounded in
time and count; the drills report figures and assert outcomes only.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import threading
import time
import uuid

from keystone_multiregion.roles.keystone import endpoint_urls

from .drills import DrillResult, wait_until
from .keystone_drills import CLIENT, KeystoneDrills
from .layers import proxy as proxy_layer
from .layers import replica as replica_layer
from .ksclient import totp

# A scratch table in the replicated database (only keystone.% is replicated): the drills' writes.
TABLE = "keystone.zz_replica_drill"
COUNTER = "inet ksl_replica_wan"


class ReplicaDrills:
    def __init__(self, dep, log=print):
        self.dep, self.topo, self.log = dep, dep.topo, log
        self.ks = KeystoneDrills(dep)
        self.replica_region = next(r.name for r in self.topo.regions if r.replica)
        self.core = [r.name for r in self.topo.regions if r.core]
        self.replicas = [n.name for n in self.topo.nodes(self.replica_region, "replica")]
        self.password = dep.secrets()["keystone_admin_password"]

    # -- helpers ---------------------------------------------------------------------------
    def url(self, region: str) -> str:
        """The region's internal endpoint (its proxies), as Keystone's clients in it use."""
        return endpoint_urls(self.topo, region)["internal"]

    def client(self, region: str, *args: str, stdin: str | None = None) -> dict:
        proxy = self.topo.nodes(region, "proxy")[0].name
        out = self.dep.lab.net.exec(proxy, [sys.executable, CLIENT, *args], timeout=90, check=False, input=stdin)
        lines = out.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"status": None, "error": out.stderr.strip()[-500:]}

    def token(self, region: str, user: str = "admin", password: str | None = None, project: str = "admin") -> dict:
        return self.client(region, "token", self.url(region), user, "@stdin", project,
                           stdin=(password or self.password) + "\n")

    def admin_token(self, region: str) -> str:
        out = self.token(region)
        if out.get("status") != 201:
            raise RuntimeError(f"admin token in {region}: {out}")
        return out["token"]

    def call(self, region: str, method: str, auth: str, path: str, body: dict | None = None) -> dict:
        if body is None:
            return self.client(region, "call", method, self.url(region), auth, path)
        return self.client(region, "call", method, self.url(region), auth, path, "@stdin",
                           stdin=json.dumps(body) + "\n")

    def validate(self, region: str, auth: str, subject: str) -> dict:
        return self.client(region, "validate", self.url(region), auth, subject)

    def sql(self, node: str, statement: str) -> list[str]:
        out = self.dep.sql(node, statement, check=False, timeout=60)
        return out.stdout.split() if out.returncode == 0 else []

    def core_writer(self) -> str:
        return self.topo.nodes(self.core[-1], "galera")[0].name  # a core node no drill kills

    def forwarded_count(self) -> int:
        """Requests lab-r's Keystone nodes sent to the core after the replica refused a write
        (the wrapper's log lines)."""
        n = 0
        for node in self.topo.nodes(self.replica_region, "keystone"):
            try:
                with open(self.dep.lab.procs.log_path(node.name, "keystone"), errors="replace") as fh:
                    n += sum(1 for line in fh if "writes: sent to a core region" in line)
            except OSError:
                pass
        return n

    # WAN byte counters on the region's Keystone and memcached nodes (nothing of theirs crosses
    # the WAN in the background: what they send to another region is exact).
    def path_hosts(self) -> list[str]:
        return [n.name for n in self.topo.nodes(self.replica_region) if n.role in ("keystone", "memcached")]

    def install_counters(self) -> None:
        others = ", ".join(r.cidr for r in self.topo.regions if r.name != self.replica_region)
        for host in self.path_hosts():
            self.dep.lab.net.exec(host, ["nft", "delete", "table", *COUNTER.split()], timeout=10, check=False)
            script = (f"table {COUNTER} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n"
                      f"  ip daddr {{ {others} }} counter\n }}\n}}\n")
            self.dep.lab.net.exec(host, ["nft", "-f", "-"], input=script, timeout=10)

    def wan_bytes(self) -> dict[str, int]:
        out = {}
        for host in self.path_hosts():
            got = self.dep.lab.net.exec(host, ["nft", "-j", "list", "table", *COUNTER.split()], timeout=10)
            out[host] = sum(int(e["counter"]["bytes"]) for item in json.loads(got.stdout).get("nftables", [])
                            for e in (item.get("rule") or {}).get("expr", []) if "counter" in e)
        return out

    def remote_sessions(self) -> int:
        """Sessions lab-r's proxies sent to another region's endpoint (HAProxy's stot of every
        server that is not a local Keystone node: the keystone backups and keystone_core)."""
        local = {n.name for n in self.topo.nodes(self.replica_region, "keystone")}
        total = 0
        for proxy in self.topo.nodes(self.replica_region, "proxy"):
            states = proxy_layer.server_states(self.dep, proxy.name) or {}
            for backend in ("keystone", "keystone_local", "keystone_core"):
                total += sum(s["stot"] for name, s in (states.get(backend) or {}).items() if name not in local)
        return total

    def replica_status(self) -> dict[str, dict]:
        return {name: replica_layer.status(self.dep, name) for name in self.replicas}

    # -- R1 ----------------------------------------------------------------------------------
    def drill_local_validation(self, count: int = 50) -> DrillResult:
        r = self.replica_region
        problems, measured = [], {}
        auth = self.admin_token(r)
        subject = self.admin_token(r)
        self.install_counters()
        self.validate(r, auth, subject)  # cached once, as any token after its first validation
        before, sessions = self.wan_bytes(), self.remote_sessions()
        t = time.monotonic()
        statuses, ms = [], []
        for _ in range(count):
            v = self.validate(r, auth, subject)
            statuses.append(v.get("status"))
            ms.append(v.get("ms") or 0)
        elapsed = time.monotonic() - t
        after, sessions_after = self.wan_bytes(), self.remote_sessions()
        wan = sum(after.values()) - sum(before.values())
        ok = statuses.count(200)
        measured.update(validations=count, ok=ok, failed=count - ok, wan_bytes=wan,
                        wan_bytes_per_validation=round(wan / max(ok, 1), 1),
                        remote_sessions=sessions_after - sessions, validation_ms_median=sorted(ms)[len(ms) // 2],
                        elapsed_s=round(elapsed, 1))
        if ok != count:
            problems.append(f"{count - ok} validations failed: {sorted(set(statuses), key=str)}")
        if wan:
            problems.append(f"{wan} bytes crossed the WAN from {r}'s Keystone/memcached: {after}")
        if sessions_after != sessions:
            problems.append(f"{r}'s proxies sent {sessions_after - sessions} sessions to other regions")
        # A user made in the core, seen in the replica region: the replication lag.
        core = self.core[0]
        admin_core = self.admin_token(core)
        name = f"r1-{uuid.uuid4().hex[:8]}"
        t = time.monotonic()
        made = self.call(core, "POST", admin_core, "/v3/users", {"user": {"name": name, "domain_id": "default"}})
        uid = ((made.get("body") or {}).get("user") or {}).get("id")
        seen = uid and wait_until(lambda: self.call(r, "GET", auth, f"/v3/users/{uid}").get("status") == 200,
                                  timeout=60, interval=0.2)
        measured["user_created_in"] = core
        measured["user_seen_in_replica_region_after_s"] = round(time.monotonic() - t, 2) if seen else None
        if made.get("status") != 201 or not seen:
            problems.append(f"user made in {core} ({made.get('status')}) not seen in {r} within 60 s")
        return DrillResult(f"R1. {r} validates locally and sees a core region's user", not problems,
                           measured, problems)

    # -- R2 ----------------------------------------------------------------------------------
    def drill_write_through_replica_region(self) -> DrillResult:
        r = self.replica_region
        problems, measured = [], {}
        auth = self.admin_token(r)
        name = f"r2-{uuid.uuid4().hex[:8]}"
        t = time.monotonic()
        made = self.call(r, "POST", auth, "/v3/projects", {"project": {"name": name, "domain_id": "default"}})
        pid = ((made.get("body") or {}).get("project") or {}).get("id")
        measured.update(create_status=made.get("status"), answered_by=made.get("region"), create_ms=made.get("ms"))
        if made.get("status") != 201 or not pid:
            return DrillResult(f"R2. a write through {r} lands in the core", False, measured,
                               [f"project create through {r}: {made}"])
        if made.get("region") not in self.core:
            problems.append(f"the create was answered by {made.get('region')}, not a core region")
        seen_at = {}
        for region in [*self.core, r]:
            token = auth if region == r else self.admin_token(region)
            got = wait_until(lambda: self.call(region, "GET", token, f"/v3/projects/{pid}").get("status") == 200,
                             timeout=60, interval=0.2)
            seen_at[region] = round(time.monotonic() - t, 2) if got else None
            if not got:
                problems.append(f"project not seen in {region} within 60 s")
        measured["seen_after_s"] = seen_at
        # Every row of the core in both replicas, by GTID.
        caught = wait_until(self._replicas_caught_up, timeout=60, interval=0.5)
        measured["replicas_at_core_gtid"] = bool(caught)
        if not caught:
            problems.append(f"replicas not at the core's GTID: {self._gtids()}")
        return DrillResult(f"R2. a write through {r} lands in the core and is seen everywhere", not problems,
                           measured, problems)

    def operations(self) -> dict[str, dict]:
        """Keystone operations made through the replica region's endpoint: each one's status,
        who answered, and whether lab-r's Keystone sent it to the core after the replica
        refused its write (the wrapper's fix: without it, each of those was a 500)."""
        r = self.replica_region
        auth = self.admin_token(r)
        admin_core = self.admin_token(self.core[0])
        out: dict[str, dict] = {}

        def record(label, result):
            n = self.forwarded_count()
            out[label] = {"status": result.get("status"), "region": result.get("region"),
                          "written_by": result.get("written_by"), "forwarded_after_refusal": n - record.seen}
            record.seen = n
            return result
        record.seen = self.forwarded_count()
        # A user of its own (made in the core, waited for in lab-r), member of admin.
        name, password = f"ops-{uuid.uuid4().hex[:8]}", "pw-" + uuid.uuid4().hex
        uid = self.call(self.core[0], "POST", admin_core, "/v3/users",
                        {"user": {"name": name, "password": password, "domain_id": "default"}})["body"]["user"]["id"]
        pid = self.call(self.core[0], "GET", admin_core, "/v3/projects?name=admin")["body"]["projects"][0]["id"]
        rid = self.call(self.core[0], "GET", admin_core, "/v3/roles?name=member")["body"]["roles"][0]["id"]
        self.call(self.core[0], "PUT", admin_core, f"/v3/projects/{pid}/users/{uid}/roles/{rid}")
        wait_until(lambda: self.call(r, "GET", auth, f"/v3/users/{uid}").get("status") == 200, 60, 0.2)
        time.sleep(1)  # the role assignment, committed after the user, replicated too

        record("token issue, good password", self.token(r, name, password))
        record("token issue, wrong password", self.token(r, name, "wrong-" + password))
        wait_until(lambda: self.sql(self.replicas[0], "SELECT failed_auth_count FROM keystone.local_user "
                                    f"WHERE user_id = '{uid}'") == ["1"], 30, 0.2)
        good = record("token issue, good password after a wrong one", self.token(r, name, password))
        record("token issue, good password again", self.token(r, name, password))
        user_token = good.get("token")
        # TOTP: a credential and a password+totp rule (writes, to the core), then a login with both.
        secret = base64.b32encode(os.urandom(20)).decode().rstrip("=")  # 160 bits (TOTP wants 128 at least)
        record("credential create (TOTP)", self.call(r, "POST", auth, "/v3/credentials",
                                                     {"credential": {"type": "totp", "user_id": uid,
                                                                     "blob": secret}}))
        wait_until(lambda: (self.call(r, "GET", auth, f"/v3/credentials?user_id={uid}").get("body") or {})
                   .get("credentials"), 60, 0.2)
        body = {"auth": {"identity": {"methods": ["password", "totp"],
                                      "password": {"user": {"name": name, "domain": {"id": "default"},
                                                            "password": password}},
                                      "totp": {"user": {"name": name, "domain": {"id": "default"},
                                                        "passcode": totp(secret)}}},
                         "scope": {"project": {"id": pid}}}}
        record("token issue, password + TOTP", self.client(r, "auth", self.url(r), stdin=json.dumps(body) + "\n"))
        # Application credential: created (write), then a login with it.
        made = record("application credential create",
                      self.call(r, "POST", user_token or auth, f"/v3/users/{uid}/application_credentials",
                                {"application_credential": {"name": f"ac-{uuid.uuid4().hex[:6]}"}}))
        ac = (made.get("body") or {}).get("application_credential") or {}
        if ac.get("id"):
            wait_until(lambda: self.call(r, "GET", auth, f"/v3/users/{uid}/application_credentials/{ac['id']}")
                       .get("status") == 200, 60, 0.2)
            body = {"auth": {"identity": {"methods": ["application_credential"],
                                          "application_credential": {"id": ac["id"], "secret": ac["secret"]}}}}
            record("token issue, application credential",
                   self.client(r, "auth", self.url(r), stdin=json.dumps(body) + "\n"))
        other = record("user create", self.call(r, "POST", auth, "/v3/users",
                                                {"user": {"name": f"ops2-{uuid.uuid4().hex[:8]}",
                                                          "domain_id": "default"}}))
        ouid = ((other.get("body") or {}).get("user") or {}).get("id")
        proj = record("project create", self.call(r, "POST", auth, "/v3/projects",
                                                  {"project": {"name": f"ops-{uuid.uuid4().hex[:8]}",
                                                               "domain_id": "default"}}))
        opid = ((proj.get("body") or {}).get("project") or {}).get("id")
        if ouid and opid:
            record("role assignment", self.call(r, "PUT", auth, f"/v3/projects/{opid}/users/{ouid}/roles/{rid}"))
        new_password = "pw2-" + uuid.uuid4().hex
        record("password change", self.call(r, "POST", user_token or auth, f"/v3/users/{uid}/password",
                                            {"user": {"password": new_password, "original_password": password}}))
        victim = self.admin_token(r)
        record("token revoke", self._revoke(r, auth, victim))
        return out

    def _revoke(self, region: str, auth: str, subject: str) -> dict:
        code = ("import json,sys,urllib.request as u,urllib.error as e\n"
                "r=u.Request(sys.argv[1]+'/v3/auth/tokens',method='DELETE',"
                "headers={'X-Auth-Token':sys.argv[2],'X-Subject-Token':sys.stdin.readline().strip()})\n"
                "try:\n x=u.urlopen(r,timeout=30); print(json.dumps({'status':x.status,"
                "'region':x.headers.get('X-Keystone-Region')}))\n"
                "except e.HTTPError as h: print(json.dumps({'status':h.code,'region':h.headers.get('X-Keystone-Region')}))")
        proxy = self.topo.nodes(region, "proxy")[0].name
        out = self.dep.lab.net.exec(proxy, [sys.executable, "-c", code, self.url(region), auth], timeout=60,
                                    check=False, input=subject + "\n")
        try:
            return json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return {"status": None, "error": out.stderr.strip()[-300:]}

    # -- GTIDs -----------------------------------------------------------------------------
    def _gtids(self) -> dict[str, str]:
        core = self.core_writer()
        out = {core: "".join(self.sql(core, "SELECT @@gtid_binlog_pos"))}
        for name in self.replicas:
            out[name] = "".join(self.sql(name, "SELECT @@gtid_slave_pos"))
        return out

    @staticmethod
    def _domain(gtids: str, domain: int = 1) -> int | None:
        for part in gtids.split(","):
            bits = part.strip().split("-")
            if len(bits) == 3 and bits[0] == str(domain):
                return int(bits[2])
        return None

    def _replicas_caught_up(self) -> bool:
        g = self._gtids()
        want = self._domain(g[self.core_writer()])
        return want is not None and all(self._domain(g[n]) == want for n in self.replicas)

    # -- R3 ----------------------------------------------------------------------------------
    def drill_source_dies(self, writes_s: float = 45) -> DrillResult:
        replica = self.replicas[0]
        node = self.topo.node(replica)
        source = self.topo.replica_sources(node)[0].name
        writer = self.core_writer()
        problems, measured = [], {"replica": replica, "source": source}
        st = replica_layer.status(self.dep, replica)
        if st.get("source") != source:
            return DrillResult(f"R3. {replica}'s source dies", False, measured,
                               [f"{replica} replicates from {st.get('source')}, not {source}: cannot run"])
        self.dep.sql(writer, f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY, at TIMESTAMP(6) "
                             "NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB; "
                             f"DELETE FROM {TABLE}")
        acked, errors = [], []
        stop = threading.Event()

        def load():
            i = 0
            while not stop.is_set() and i < 10000:
                i += 1
                out = self.dep.sql(writer, f"INSERT INTO {TABLE} (id) VALUES ({i})", check=False, timeout=30)
                (acked if out.returncode == 0 else errors).append(i)
                time.sleep(0.05)
        th = threading.Thread(target=load, daemon=True)
        th.start()
        time.sleep(3)
        t = time.monotonic()
        self.dep.lab.procs.kill(source, "mariadb", signal.SIGKILL)
        switched = wait_until(lambda: (replica_layer.status(self.dep, replica).get("source") not in (None, source)
                                       and replica_layer.status(self.dep, replica).get("healthy")),
                              timeout=90, interval=0.5)
        measured["switched_after_s"] = round(time.monotonic() - t, 1) if switched else None
        st = replica_layer.status(self.dep, replica)
        measured["new_source"] = st.get("source")
        time.sleep(max(0.0, writes_s - (time.monotonic() - t)) if switched else 0)
        stop.set()
        th.join(timeout=60)
        measured.update(acknowledged=len(acked), refused=len(errors))
        caught = wait_until(self._replicas_caught_up, timeout=60, interval=0.5)
        gtids = self._gtids()
        measured["gtid_domain1"] = {k: self._domain(v) for k, v in gtids.items()}
        have = {name: set(int(x) for x in self.sql(name, f"SELECT id FROM {TABLE}")) for name in self.replicas}
        missing = {name: len(set(acked) - ids) for name, ids in have.items()}
        measured["missing"] = missing
        if not switched:
            problems.append(f"{replica} did not switch from {source} within 90 s: {st}")
        if not caught:
            problems.append(f"replicas not at the core's GTID: {gtids}")
        if any(missing.values()):
            problems.append(f"acknowledged writes missing on replicas: {missing}")
        if errors:
            problems.append(f"{len(errors)} writes refused by {writer}")
        # The dead node back (it rejoins the cluster by IST).
        t = time.monotonic()
        self.dep.start_galera(source)
        measured["source_rejoined_s"] = round(time.monotonic() - t, 1)
        self.dep.sql(writer, f"DROP TABLE IF EXISTS {TABLE}", check=False)
        return DrillResult(f"R3. {replica}'s source {source} dies: it switches with no transaction missed",
                           not problems, measured, problems)

    # -- R4 ----------------------------------------------------------------------------------
    def drill_cut_off(self, validations: int = 20) -> DrillResult:
        r = self.replica_region
        problems, measured = [], {}
        auth = self.admin_token(r)
        subject = self.admin_token(r)
        self.validate(r, auth, subject)
        core = self.core[0]
        admin_core = self.admin_token(core)
        net = self.dep.lab.net
        t0 = time.monotonic()
        net.partition_region(r)
        try:
            statuses = []
            for _ in range(validations):
                statuses.append(self.validate(r, auth, subject).get("status"))
            measured["validations_ok_while_cut"] = f"{statuses.count(200)}/{validations}"
            if statuses.count(200) != validations:
                problems.append(f"validations while cut: {statuses}")
            login = self.token(r)
            measured["token_issue_while_cut"] = login.get("status")
            attempts = []

            def refused():
                got = self.call(r, "POST", auth, "/v3/projects",
                                {"project": {"name": f"r4-{uuid.uuid4().hex[:8]}", "domain_id": "default"}})
                clear = isinstance(got.get("body"), dict)  # the proxies' JSON, not HAProxy's own page
                attempts.append(f"{got.get('status')}{'' if clear else ' (not JSON)'} in {got.get('ms')} ms")
                return got if got.get("status") == 503 and clear else None
            t = time.monotonic()
            got = wait_until(refused, timeout=60, interval=1.0)
            measured["clear_503_after_s"] = round(time.monotonic() - t, 1) if got else None
            measured["write_attempts"] = attempts
            message = (((got or {}).get("body") or {}).get("error") or {}).get("message", "")
            measured["write_refused_503"] = bool(got)
            measured["write_503_message"] = message[:80]
            if not got or "core region" not in message:
                problems.append(f"no clear 503 for a write while cut: {attempts}, {got}")
            if any(not a.startswith(("503", "None")) for a in attempts):
                problems.append(f"a write while cut got {attempts}")
            # Made in the core while lab-r is cut: it must arrive after the heal.
            name = f"r4-{uuid.uuid4().hex[:8]}"
            made = self.call(core, "POST", admin_core, "/v3/users", {"user": {"name": name, "domain_id": "default"}})
            uid = ((made.get("body") or {}).get("user") or {}).get("id")
            measured["cut_s"] = round(time.monotonic() - t0, 1)
        finally:
            net.heal()
        t = time.monotonic()
        seen = uid and wait_until(lambda: self.call(r, "GET", auth, f"/v3/users/{uid}").get("status") == 200,
                                  timeout=120, interval=0.5)
        measured["caught_up_after_heal_s"] = round(time.monotonic() - t, 1) if seen else None
        healthy = wait_until(lambda: all(s.get("healthy") for s in self.replica_status().values()), 120, 1.0)
        measured["replicas_healthy_after_heal_s"] = round(time.monotonic() - t, 1) if healthy else None
        measured["sources_after"] = {k: v.get("source") for k, v in self.replica_status().items()}
        if not seen:
            problems.append(f"the user made in {core} during the cut not seen in {r} 120 s after the heal")
        if not healthy:
            problems.append(f"replicas not healthy after the heal: {self.replica_status()}")
        writes = wait_until(lambda: self.call(r, "POST", auth, "/v3/projects",
                                              {"project": {"name": f"r4b-{uuid.uuid4().hex[:8]}",
                                                           "domain_id": "default"}}).get("status") == 201, 60, 1.0)
        measured["writes_through_replica_region_after_heal"] = bool(writes)
        if not writes:
            problems.append(f"writes through {r} still refused 60 s after the heal")
        return DrillResult(f"R4. {r} cut off validates, refuses writes with a 503, catches up after the heal",
                           not problems, measured, problems)

    # -- R5 ----------------------------------------------------------------------------------
    def commit_ms(self, node: str, count: int) -> tuple[float, int]:
        """Mean ms per autocommitted INSERT on `node` (one client session), and the rows written."""
        self.dep.sql(node, f"CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY, at TIMESTAMP(6) "
                           f"NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB; DELETE FROM {TABLE}")
        statements = "".join(f"INSERT INTO {TABLE} (id) VALUES ({i});\n" for i in range(1, count + 1))
        t = time.monotonic()
        self.dep.sql(node, statements, timeout=600)
        ms = (time.monotonic() - t) * 1000 / count
        rows = int(("".join(self.sql(node, f"SELECT COUNT(*) FROM {TABLE}")) or "0"))
        return round(ms, 2), rows

    def drill_commit_latency(self, count: int = 200, ms: float = 50) -> DrillResult:
        r = self.replica_region
        node = self.topo.nodes(self.core[0], "galera")[0].name
        problems, measured = [], {"commits": count, "on": node}
        near, rows_near = self.commit_ms(node, count)
        others = [x.cidr for x in self.topo.regions if x.name != r]
        modes = set()
        for host in self.topo.nodes(r):
            modes.add(self.dep.lab.net.set_latency(host.name, ms, peers=others))
        try:
            far, rows_far = self.commit_ms(node, count)
            ok = wait_until(self._replicas_caught_up, timeout=120, interval=0.5)
            measured["replicas_caught_up_at_distance"] = bool(ok)
        finally:
            for host in self.topo.nodes(r):
                self.dep.lab.net.clear_latency(host.name)
        measured.update(commit_ms_replica_near=near, commit_ms_replica_at_distance=far, one_way_ms=ms,
                        latency_mode=sorted(modes))
        if rows_near != count or rows_far != count:
            problems.append(f"commits: {rows_near} and {rows_far} rows of {count}")
        if not measured["replicas_caught_up_at_distance"]:
            problems.append("replicas did not catch up at the distance")
        self.dep.sql(node, f"DROP TABLE IF EXISTS {TABLE}", check=False)
        return DrillResult(f"R5. the core's commit latency with {r} at {ms:g} ms one way", not problems,
                           measured, problems)

    # -- R6: the bound ---------------------------------------------------------------------
    def drill_revocation_bound(self) -> DrillResult:
        """A token revoked in a core region, and one revoked through lab-r's endpoint, each
        cached in lab-r first: how long lab-r still accepts it. Bound: replication lag +
        keystone.token_cache_s (a revocation invalidates the writing region's memcached only)."""
        r = self.replica_region
        bound = self.topo.keystone.token_cache_s
        problems, measured = [], {"token_cache_s": bound}
        auth = self.admin_token(r)
        for where in (self.core[0], r):
            victim = self.admin_token(r)
            self.validate(r, auth, victim)  # cached in lab-r
            revoker = self.admin_token(where)
            t = time.monotonic()
            got = self._revoke(where, revoker, victim)
            checks = []

            def rejected():
                v = self.validate(r, auth, victim)
                checks.append(v.get("status"))
                return v.get("status") == 404
            done = wait_until(rejected, timeout=bound + 60, interval=0.5)
            measured[f"revoked_in_{where}"] = {"status": got.get("status"), "answered_by": got.get("region"),
                                               "accepted_in_replica_region_for_s":
                                                   round(time.monotonic() - t, 1) if done else None,
                                               "checks": len(checks)}
            if got.get("status") not in (200, 204) or not done:
                problems.append(f"revocation in {where}: {got}, rejected in {r}: {bool(done)}")
        return DrillResult(f"R6. revocations reach {r} within replication lag + token cache ({bound} s)",
                           not problems, measured, problems)


def main(argv=None) -> int:  # pragma: no cover - a convenience for a lab that is up
    import argparse

    from keystone_multiregion.topology import load_topology_file

    from . import Lab
    from .deployment import LabDeployment
    ap = argparse.ArgumentParser()
    ap.add_argument("--labdir", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--topology", default=os.path.join(os.path.dirname(__file__), "topology-region-r.yaml"))
    ap.add_argument("drills", nargs="*")
    args = ap.parse_args(argv)
    dep = LabDeployment(Lab(args.labdir, args.prefix), load_topology_file(args.topology), args.topology)
    d = ReplicaDrills(dep)
    for name in args.drills:
        result = getattr(d, name)()
        print(result.line() if isinstance(result, DrillResult) else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
