"""Drills D1-D7: changing the running lab the way `pulumi up` changes a deployment.

Every change goes through the stack's own command line: node-agent apply over SSH from the
ops host in admin_cidr, the node's host key pinned, the payload (keystone_multiregion/push.py)
on stdin (LabDeployment.push_files), one node of a role after the other, each push ending
only when its node is healthy again. Each drill runs under continuous load (Load: token
validations through every region's public VIPs, writes through every region's database
frontend) and fails on a failed validation, a lost acknowledged write, or a refusal it did
not expect, never on a duration: durations and failed (unacknowledged) writes are reported.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

from keystone_multiregion import push
from keystone_multiregion.render import render_node
from keystone_multiregion.roles.galera import GALERA_CONF
from keystone_multiregion.roles.proxy import HAPROXY_CFG

from keystone_multiregion.topology import load_topology_file

from .deployment import LAB_TOPOLOGY
from .drills import DrillResult
from .keystone_drills import KeystoneDrills
from .layers import proxy as proxy_layer
from .proxy_drills import _DB_LOOP, Probe, ProxyDrills
from .util import LabError

# The lab with a fourth region (D3 adds it, D4 removes it again).
REGION_D_TOPOLOGY = Path(__file__).resolve().parent / "topology-region-d.yaml"
REGION_R_TOPOLOGY = Path(__file__).resolve().parent / "topology-region-r.yaml"  # a replica region (#15)
LOAD_LIMIT_S = 900  # no drill's load runs longer (every loop is bounded in count and time too)


class Load:
    """Continuous load for the length of a drill: in every region, a client validating a token
    through the region's public VIP and a client writing through its database frontend (each
    write acknowledged with its id). Stopped by a file the loops watch; bounded regardless."""

    def __init__(self, dep, validate_interval: float = 0.2, write_interval: float = 0.3,
                 regions: list[str] | None = None):
        self.dep = dep
        self.stop_file = Path(dep.lab.labdir) / f"load-stop-{uuid.uuid4().hex[:8]}"
        self.probes: dict[str, dict[str, Probe]] = {}
        if regions is None:
            regions = [r.name for r in dep.topo.regions if dep.topo.vips(r.name)]
        cnf = proxy_layer.ensure_check_user(dep)
        proxy_layer.ensure_drill_table(dep, dep.topo.nodes(role="galera")[0].name)
        for region in regions:
            drills = ProxyDrills(dep, region)
            vip = drills.vips("public")[0]
            token = drills._admin_token(vip)
            validate = drills.https_probe(vip, duration=LOAD_LIMIT_S, interval=validate_interval,
                                          path="/v3/auth/tokens", headers={"X-Auth-Token": token,
                                                                            "X-Subject-Token": token}, timeout=10,
                                          stop_file=str(self.stop_file))
            internal = drills.vips("internal")[0]
            write_cfg = {"cnf": cnf, "address": internal.address, "duration": LOAD_LIMIT_S, "timeout": 10.0,
                         "interval": write_interval, "max": int(LOAD_LIMIT_S / write_interval) + 10,
                         "stop_file": str(self.stop_file),
                         "statement": f"INSERT INTO {proxy_layer.DRILL_DB}.ticks (node) VALUES (@@wsrep_node_name); "
                                      "SELECT LAST_INSERT_ID()"}
            self.probes[region] = {"validate": validate, "write": Probe(dep, drills.client, _DB_LOOP, write_cfg)}
        self.t0 = time.monotonic()

    def finish(self) -> dict:
        """Stop the clients and say what they saw: validations and writes, failed ones, and
        acknowledged writes missing from the database (lost)."""
        self.stop_file.write_text("stop\n")
        try:
            out = {"load_s": round(time.monotonic() - self.t0, 1), "validations": 0, "failed_validations": 0,
                   "writes": 0, "failed_writes": 0, "lost_writes": 0, "errors": [], "per_region": {}}
            acked: list[int] = []
            for region, probes in self.probes.items():
                checks = probes["validate"].results()
                writes = probes["write"].results()
                bad = [r for r in checks if r.get("status") != 200]
                failed = [r for r in writes if not r.get("ok")]
                ids = [int(r["out"].split()[0]) for r in writes if r.get("ok") and r.get("out", "").split()[:1]
                       and r["out"].split()[0].isdigit()]
                acked += ids
                out["validations"] += len(checks)
                out["failed_validations"] += len(bad)
                out["writes"] += len(writes)
                out["failed_writes"] += len(failed)
                out["errors"] += sorted({r.get("error") or f"HTTP {r.get('status')}" for r in bad + failed})[:3]
                # The longest a client waited for its write's acknowledgement (a stall, e.g.
                # flow control), and the longest stretch between two acknowledgements.
                done = sorted(r["t1"] for r in writes if r.get("ok") and "t1" in r)
                longest = max([r["t1"] - r["t0"] for r in writes if "t1" in r] or [0.0])
                gap = max([b - a for a, b in zip(done, done[1:])] or [0.0])
                out["longest_write_s"] = round(max(out.get("longest_write_s", 0.0), longest), 3)
                out["longest_ack_gap_s"] = round(max(out.get("longest_ack_gap_s", 0.0), gap), 3)
                out["per_region"][region] = {"validations": len(checks), "failed_validations": len(bad),
                                             "writes": len(writes), "failed_writes": len(failed),
                                             "longest_write_s": round(longest, 3), "longest_ack_gap_s": round(gap, 3)}
            if acked:
                galera = self.dep.topo.nodes(role="galera")[0].name
                found = set()
                for i in range(0, len(acked), 500):
                    chunk = acked[i:i + 500]
                    rows = self.dep.sql(galera, f"SELECT id FROM {proxy_layer.DRILL_DB}.ticks WHERE id IN "
                                                f"({','.join(map(str, chunk))})").stdout.split()
                    found |= {int(x) for x in rows}
                out["lost_writes"] = len(set(acked) - found)
            out["acknowledged_writes"] = len(acked)
            return out
        finally:
            for probes in self.probes.values():
                for probe in probes.values():
                    probe.stop()
            self.stop_file.unlink(missing_ok=True)


def provider_option(text: str, key: str, value: str) -> str:
    """galera.cnf with one Galera provider option set (added or replaced): a setting MariaDB
    reads only when the member starts."""
    def edit(match):
        options = [o for o in match.group(2).split(";") if o and not o.startswith(f"{key}=")]
        return f'{match.group(1)}"{";".join(options + [f"{key}={value}"])}"'
    new, count = re.subn(r'^(wsrep_provider_options\s*=\s*)"([^"]*)"', edit, text, flags=re.M)
    if count != 1:
        raise LabError("galera.cnf has no single wsrep_provider_options line to change")
    return new


def _report(out) -> dict:
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"stdout": out.stdout.strip()[-300:]}


class ChangeDrills:
    def __init__(self, dep):
        self.dep = dep
        self.topo = dep.topo
        self.serving = [r.name for r in self.topo.regions if self.topo.vips(r.name)]

    def payload(self, name: str, **changes) -> dict:
        """The node's push as the stack renders it, with some files' content changed by a
        function (old content -> new content)."""
        data = push.payload(self.topo, render_node(self.topo, name, self.dep.secrets()))
        for f in data["files"]:
            if f["path"] in changes:
                f["content"] = changes[f["path"]](f["content"])
        return data

    def _roll(self, nodes, change, problems, measured, expect_actions=None) -> None:
        """Push to each node in turn (as the chained files-<node> commands do): the next one
        only after the previous push has ended, healthy."""
        for name in nodes:
            t = time.monotonic()
            out = self.dep.push_files(name, self.payload(name, **change))
            report = _report(out)
            measured.setdefault("pushes", {})[name] = {"exit": out.returncode, "s": round(time.monotonic() - t, 1),
                                                       "actions": report.get("actions"),
                                                       "healthy_after_s": report.get("healthy_after_s")}
            if out.returncode != 0:
                problems.append(f"the push to {name} failed (exit {out.returncode}): "
                                f"{out.stderr.strip().splitlines()[-1:] or report}")
                return
            if expect_actions is not None and not any(a.startswith(expect_actions) for a in report.get("actions", [])):
                problems.append(f"{name}: expected {expect_actions}, the agent did {report.get('actions')}")

    def _under_load(self, title: str, body, regions: list[str] | None = None,
                    validate_interval: float = 0.2) -> DrillResult:
        problems: list[str] = []
        measured: dict = {}
        load = Load(self.dep, regions=regions, validate_interval=validate_interval)
        time.sleep(1.0)  # the clients are running before the change
        t = time.monotonic()
        try:
            body(problems, measured)
        finally:
            measured["change_s"] = round(time.monotonic() - t, 1)
            time.sleep(1.0)
            seen = load.finish()
        measured["load"] = seen
        if seen["failed_validations"]:
            problems.append(f"{seen['failed_validations']} of {seen['validations']} validations failed: {seen['errors']}")
        # A failed write was never acknowledged (the client saw the error and may retry): it is
        # reported, not a failure of the drill; an acknowledged write that is missing is.
        if seen["lost_writes"]:
            problems.append(f"{seen['lost_writes']} acknowledged writes are missing from the database")
        return DrillResult(title, not problems, measured, problems)

    # -- D1 -------------------------------------------------------------------------------------
    def drill_haproxy_push(self) -> DrillResult:
        """D1: a haproxy.cfg change pushed to both proxies of the first region, one after the
        other: checked with haproxy -c, HAProxy reloaded (never restarted)."""
        region = self.serving[0]
        proxies = [n.name for n in self.topo.nodes(region, "proxy")]
        marker = f"d1-{uuid.uuid4().hex[:6]}"

        def change(text: str) -> str:
            # a real setting, harmless: how long HAProxy waits for a client's request headers
            return text.replace("timeout http-request 10s", "timeout http-request 12s") + f"# {marker}\n"

        def body(problems, measured):
            measured["region"] = region
            self._roll(proxies, {HAPROXY_CFG: change}, problems, measured, expect_actions="haproxy:reload")
            for name in proxies:
                cfg = self.dep.lab.procs.run(name, ["cat", HAPROXY_CFG]).stdout
                if marker not in cfg:
                    problems.append(f"{name}'s haproxy.cfg is not the pushed one")
        result = self._under_load(f"D1. a haproxy.cfg change pushed to both proxies of {region}", body)
        self._restore([n for n in proxies])
        return result

    # -- D2 -------------------------------------------------------------------------------------
    def drill_galera_restart_setting(self) -> DrillResult:
        """D2: a Galera setting MariaDB takes only at start (a provider option), rolled over
        every Galera node, one after the other: the agent checks the cluster is whole, restarts
        the member, and answers once it is Synced in a cluster of the full size again."""
        nodes = [n.name for n in self.topo.nodes(role="galera")]

        def change(text: str) -> str:
            return provider_option(text, "evs.inactive_check_period", "PT0.9S")

        def body(problems, measured):
            self._roll(nodes, {GALERA_CONF: change}, problems, measured, expect_actions="galera:settings (restart)")
        result = self._under_load("D2. a Galera setting that needs a restart, rolled over every Galera node", body)
        self._restore(nodes)
        return result

    # -- D5 -------------------------------------------------------------------------------------
    def drill_certificate_renewal(self) -> DrillResult:
        """D5: a Galera node's certificate renewed (a new one from the same CA, as pulumi-tls
        re-issues it in its renewal window) and pushed: the agent installs it and restarts
        the member, drained first; the server then presents the new certificate."""
        from keystone_multiregion import pki
        from keystone_multiregion.secrets import CA_CERT
        node = self.topo.nodes(self.serving[0], "galera")[0]
        secrets = self.dep.secrets()
        if not secrets.get("lab_galera_ca_key"):
            return DrillResult("D5. a node certificate renewed and pushed", False, {},
                               ["the lab's secrets hold no lab_galera_ca_key (an older lab directory): "
                                "`./run lab down` and `./run lab up` make new ones"])

        def served_not_before() -> str:
            return self.dep.sql(node.name, "SHOW GLOBAL STATUS LIKE 'Ssl_server_not_before'").stdout.split("\t")[-1].strip()

        def body(problems, measured):
            measured["node"] = node.name
            measured["before"] = served_not_before()
            time.sleep(1.1)  # a certificate's not-before has a one-second resolution
            cert, key = pki.issue(secrets[CA_CERT], secrets["lab_galera_ca_key"], node.name, node.address)
            renewed = {**secrets, "tls": {**secrets["tls"], node.name: {"cert": cert, "key": key}}}
            t = time.monotonic()
            out = self.dep.push_files(node.name, push.payload(self.topo, render_node(self.topo, node.name, renewed)))
            report = _report(out)
            measured["push"] = {"exit": out.returncode, "s": round(time.monotonic() - t, 1),
                                "actions": report.get("actions")}
            if out.returncode != 0:
                problems.append(f"the push failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
                return
            self.dep.save_secrets(renewed)  # the stack's state holds the renewed certificate now
            measured["after"] = served_not_before()
            if measured["after"] == measured["before"] or not measured["after"]:
                problems.append(f"{node.name} still presents the old certificate ({measured['after']})")
            if report.get("actions") != ["galera:restart"]:
                problems.append(f"expected a drained restart, the agent did {report.get('actions')}")
        return self._under_load(f"D5. {node.name}'s certificate renewed and pushed", body)

    # -- D6 -------------------------------------------------------------------------------------
    def drill_quorum_refusal(self) -> DrillResult:
        """D6: with one Galera member down, a push that would restart another is refused with
        one line and changes nothing (file, process); the member comes back afterwards."""
        nodes = [n.name for n in self.topo.nodes(role="galera")]
        down, target = nodes[-1], nodes[0]
        problems: list[str] = []
        measured: dict = {"down": down, "target": target}
        before_cfg = self.dep.lab.procs.run(target, ["cat", GALERA_CONF]).stdout
        before_pid = self.dep.lab.procs.pid(target, "mariadb")
        self.dep.lab.procs.stop(down, "mariadb", timeout=120)
        try:
            data = self.payload(target, **{GALERA_CONF: lambda t: provider_option(
                t, "evs.inactive_check_period", "PT0.8S")})
            out = self.dep.push_files(target, data)
            measured["exit"] = out.returncode
            measured["said"] = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else None
            if out.returncode != 2 or "refusing to restart MariaDB: the cluster is not whole" not in out.stderr:
                problems.append(f"the push was not refused as it should be: exit {out.returncode}, {measured['said']}")
            after_cfg = self.dep.lab.procs.run(target, ["cat", GALERA_CONF]).stdout
            measured["file_unchanged"] = after_cfg == before_cfg
            measured["process_unchanged"] = self.dep.lab.procs.pid(target, "mariadb") == before_pid
            if not measured["file_unchanged"] or not measured["process_unchanged"]:
                problems.append("the refused push changed the node")
        finally:
            t = time.monotonic()
            self.dep.start_galera(down)
            measured["member_back_s"] = round(time.monotonic() - t, 1)
        return DrillResult("D6. a push that would cost quorum is refused, nothing changed", not problems, measured,
                           problems)

    # -- D3, D4 ---------------------------------------------------------------------------------
    def drill_region_added(self, topology_path: str | Path = REGION_D_TOPOLOGY) -> DrillResult:
        """D3: a fourth region (Galera, Keystone, memcached, two proxies) added to the running
        lab in the documented order (LabDeployment.change_topology): the existing regions get
        the new peers, backends, grants and rules by push, then the region is created and its
        Galera node joins by SST. Then: the cluster has every member and vote, a token issued
        in the new region validates in the first one and the other way round, and a user
        created through the new region logs in everywhere."""
        new = load_topology_file(topology_path)
        before = {r.name for r in self.dep.topo.regions}
        added = [r.name for r in new.regions if r.name not in before]
        replica = len(added) == 1 and new.region(added[0]).replica
        title = (f"R0. a replica region added to the running lab ({added[0]})" if replica else
                 f"D3. a region added to the running lab ({', '.join(added) or 'none'})")
        if len(added) != 1:
            return DrillResult(title, False, {}, [f"{topology_path} adds {added}, not one region"])
        region, first = added[0], self.serving[0]

        def body(problems, measured):
            measured["steps"] = self.dep.change_topology(new, topology_path, log=lambda *_: None)
            problems += self._cluster_problems(new, measured)
            # Through each region's endpoint, as its clients: a replica region's Keystone
            # sends a write it cannot make to the core through its proxies.
            ks = KeystoneDrills(self.dep, through_endpoints=True)
            for src, dst in ((region, first), (first, region)):
                token = ks.admin_token(src)
                seen = ks.validate(dst, ks.admin_token(dst), token)
                measured[f"token_from_{src}_in_{dst}"] = seen.get("status")
                if seen.get("status") != 200:
                    problems.append(f"a token issued in {src} does not validate in {dst}: {seen}")
            name, password = f"d3-{uuid.uuid4().hex[:8]}", f"d3-{uuid.uuid4().hex}"
            admin = ks.admin_token(region)
            project = ks.call(region, "POST", admin, "/v3/projects",
                              {"project": {"name": name, "domain_id": "default"}})
            user = ks.call(region, "POST", admin, "/v3/users",
                           {"user": {"name": name, "password": password, "domain_id": "default"}}, secret=True)
            roles = ks.call(region, "GET", admin, "/v3/roles?name=member")
            try:
                ids = (project["body"]["project"]["id"], user["body"]["user"]["id"],
                       roles["body"]["roles"][0]["id"])
            except (KeyError, IndexError, TypeError):
                problems.append(f"creating a project and user through {region}: {project.get('status')}/"
                                f"{user.get('status')}/{roles.get('status')}")
                return
            grant = ks.call(region, "PUT", admin, f"/v3/projects/{ids[0]}/users/{ids[1]}/roles/{ids[2]}")
            if grant.get("status") != 204:
                problems.append(f"granting member through {region}: {grant.get('status')}")
            logins = {r: ks.ks(r, "token", ks.url(r), name, password, name).get("status") for r in ks.regions}
            measured["user_from_new_region_logs_in"] = logins
            if set(logins.values()) != {201}:
                problems.append(f"the user created through {region} cannot log in everywhere: {logins}")
        return self._under_load(title, body, regions=self.serving)

    def drill_region_removed(self, topology_path: str | Path = LAB_TOPOLOGY) -> DrillResult:
        """D4: the region D3 added removed again, in the documented order: its Galera member
        leaves the cluster (the command the stack runs when it deletes the node), its nodes go,
        then the other regions get the files without it by push (peers, backends, grants)."""
        new = load_topology_file(topology_path)
        keep = {r.name for r in new.regions}
        removed = [r for r in self.dep.topo.regions if r.name not in keep]
        title = (f"R7. a replica region removed from the running lab ({removed[0].name})"
                 if len(removed) == 1 and removed[0].replica else
                 f"D4. a region removed from the running lab ({', '.join(r.name for r in removed) or 'none'})")
        if len(removed) != 1:
            return DrillResult(title, False, {}, [f"{topology_path} removes {[r.name for r in removed]}, not one "
                                                  "region (run D3 first)"])
        gone = removed[0]
        serving = [r.name for r in new.regions if new.vips(r.name)]

        def body(problems, measured):
            measured["steps"] = self.dep.change_topology(new, topology_path, log=lambda *_: None)
            problems += self._cluster_problems(new, measured)
            left = [h for h, v in self.dep.lab.net.hosts().items() if v["region"] == gone.name]
            if left:
                problems.append(f"{gone.name}'s hosts are still there: {left}")
            prefix = str(gone.network.network_address).rsplit(".", 1)[0] + "."
            galera = new.nodes(role="galera")[0].name
            hosts = self.dep.sql(galera, "SELECT Host FROM mysql.user WHERE User = 'keystone'").stdout.split()
            measured["keystone_db_hosts"] = hosts
            if any(h.startswith(str(gone.network.network_address)) for h in hosts):
                problems.append(f"the database still admits Keystone from {gone.cidr}: {hosts}")
            for proxy in new.nodes(role="proxy"):
                cfg = self.dep.lab.procs.run(proxy.name, ["cat", HAPROXY_CFG]).stdout
                if prefix in cfg:
                    problems.append(f"{proxy.name}'s haproxy.cfg still names {gone.name}'s addresses")
            ks = KeystoneDrills(self.dep)
            for r in ks.regions:
                token = ks.admin_token(r)
                if ks.validate(r, token, token).get("status") != 200:
                    problems.append(f"{r} does not validate its own token after the removal")
        return self._under_load(title, body, regions=serving)

    def _cluster_problems(self, topo, measured) -> list[str]:
        """Every data node Synced in a Primary component of every member, with every vote."""
        problems = []
        size = str(len(topo.galera_members))
        for node in topo.nodes(role="galera"):
            st = self.dep.galera_status(node.name)
            if not (st.get("healthy") and st.get("wsrep_cluster_size") == size):
                problems.append(f"{node.name}: {st.get('wsrep_local_state_comment')}/{st.get('wsrep_cluster_status')}, "
                                f"{st.get('wsrep_cluster_size')} members (expected {size})")
        first = topo.nodes(role="galera")[0].name
        weight = self.dep.sql(first, "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_weight'").stdout.split()
        measured["cluster_votes"] = int(weight[-1]) if weight and weight[-1].isdigit() else None
        if measured["cluster_votes"] != topo.galera_voters:
            problems.append(f"the cluster counts {measured['cluster_votes']} votes, the topology {topo.galera_voters}")
        return problems

    def _restore(self, nodes) -> None:
        """Back to the rendered files (the lab stays as it was for later drills)."""
        for name in nodes:
            out = self.dep.push_files(name)
            if out.returncode != 0:
                raise LabError(f"restoring {name}'s files failed: {out.stderr.strip()[-300:]}")

    # -- D7 -------------------------------------------------------------------------------------
    def drill_db_sessions_cut(self, rounds: int = 40, pause_s: float = 0.3) -> DrillResult:
        """D7: what a drained restart and the proxies' session moves do to Keystone, many times
        over: every database session of Keystone killed at every Galera node, `rounds` times,
        under load. Keystone answers some of those losses itself with a 500 (its auth-context
        middleware catches the error); the shipped WSGI wrapper answers such a validation
        again on a fresh connection. Reported: sessions killed, validations answered again."""
        galera = [n.name for n in self.topo.nodes(role="galera")]
        keystone = [n.name for n in self.topo.nodes(role="keystone")]

        def answered_again() -> int:
            return sum(Path(self.dep.lab.procs.log_path(k, "keystone")).read_text(errors="replace")
                       .count("keystone-wsgi: the database connection was lost")
                       for k in keystone if Path(self.dep.lab.procs.log_path(k, "keystone")).exists())

        def body(problems, measured):
            before, killed = answered_again(), 0
            for _ in range(rounds):
                for name in galera:
                    ids = self.dep.sql(name, "SELECT id FROM information_schema.processlist WHERE user = 'keystone'",
                                       check=False).stdout.split()
                    for cid in ids:
                        killed += self.dep.sql(name, f"KILL CONNECTION {int(cid)}", check=False).returncode == 0
                time.sleep(pause_s)
            measured.update(sessions_killed=killed, validations_answered_again=answered_again() - before)
            if not killed:
                problems.append("no Keystone database session was found to kill: the drill tested nothing")
        return self._under_load(f"D7. Keystone's database sessions killed at every Galera node, {rounds} times", body,
                                validate_interval=0.05)

    def run_all(self, log=print) -> list[DrillResult]:
        results = []
        for drill in (self.drill_haproxy_push, self.drill_galera_restart_setting, self.drill_certificate_renewal,
                      self.drill_quorum_refusal, self.drill_region_added, self.drill_region_removed,
                      self.drill_db_sessions_cut):
            result = drill()
            log(result.line())
            results.append(result)
        return results
