"""Drills B1-B4: backups, point-in-time recovery and refused backups, in the running lab.

Every step is the node's own command line (galera-node backup / backups / restore / rejoin,
from the rendered files), against the lab's real Swift (lab/objectstore.py). A drill fails on
a failed validation, a lost acknowledged write, data missing after a restore, or a refusal
that did not happen; never on a duration: durations, RPO and RTO are reported.

    B1  a backup under load: failed validations, the longest write stall, flow control seen
        by the other regions, the desync time
    B2  a mistake (a project with users and role assignments deleted in lab-a) replicated
        everywhere, undone by restore --to the second before it; the copy in lab-b altered
        first, and refused with the cluster down
    B3  every Galera data volume lost: rebuilt from the latest backup and shipped binary logs;
        RPO (acknowledged writes lost) and RTO reported
    B4  an altered, a truncated and a foreign backup: detected by `backups --verify` and
        refused by `restore --dry-run`; nothing restored
"""

from __future__ import annotations

import datetime
import json
import os
import secrets as _random
import tempfile
import time
import uuid

from keystone_multiregion.roles.backup import BACKUP_SERVICE, designated

from . import objectstore, service
from .change_drills import ChangeDrills, Load
from .drills import DrillResult, wait_until
from .keystone_drills import KeystoneDrills
from .layers import proxy as proxy_layer
from .util import LabError

WAIT_S = 300  # every wait here is bounded (a safety bound, not a target)


def _last_json(text: str) -> dict:
    for line in reversed((text or "").strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


class BackupDrills:
    def __init__(self, dep):
        self.dep = dep
        self.topo = dep.topo
        self.regions = [r.name for r in self.topo.regions if self.topo.nodes(r.name, "galera")]
        self.galera = [n.name for n in self.topo.nodes(role="galera")]

    # -- helpers --------------------------------------------------------------------------------
    def backup_node(self, region: str) -> str:
        return next(n.name for n in self.topo.nodes(region, "galera") if designated(self.topo, n))

    def galera_node(self, name: str, *args: str, timeout: float = 900):
        return self.dep.lab.procs.run(name, self.dep.GALERA_TOOL + list(args), check=False, timeout=timeout)

    def scheduled_backup(self, region: str):
        """The timer's run, by the rendered unit's own ExecStart line (bounded: a safety bound;
        about a minute on an idle lab, 13 minutes once with three labs on two cores)."""
        name = self.backup_node(region)
        argvs = service.exec_lines(self.dep.lab.procs.host_path(name, BACKUP_SERVICE), "ExecStart")
        return [self.dep.lab.procs.run(name, argv, check=False, timeout=WAIT_S * 6) for argv in argvs]

    def swift(self, *args: str, input_path: str | None = None):
        """The swift client as the backup user, from the ops host (credentials in its environment)."""
        from .ssh import OPS_HOST
        return self.dep.lab.procs.run(OPS_HOST, ["swift", *args], env=objectstore.swift_env(objectstore.credentials(self.dep)),
                                      check=False, timeout=120)

    def _scratch(self, prefix: str) -> str:
        """A file name in the lab directory (the ops host's swift client reads and writes it)."""
        d = os.path.join(self.dep.lab.labdir, "backup-drills")
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=prefix, dir=d)
        os.close(fd)
        return path

    def flow_control(self) -> dict:
        out = {}
        for name in self.galera:
            rows = self.dep.sql(name, "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_flow_control_sent', "
                                      "'wsrep_flow_control_recv', 'wsrep_flow_control_paused_ns')",
                                check=False).stdout.split("\n")
            out[name] = {r.split("\t")[0]: int(r.split("\t")[1]) for r in rows if "\t" in r}
        return out

    def stop_all_galera(self) -> None:
        for name in reversed(self.galera):
            self.dep.lab.procs.stop(name, "mariadb", timeout=180)

    def restore_on(self, name: str, *args: str) -> float:
        """galera-node restore ... --exec on `name` (the lab's stand-in for systemd: the process
        becomes mariadbd), then init-cluster; seconds until Synced/Primary."""
        t = time.monotonic()
        self.dep.lab.procs.start(name, "mariadb", self.dep.GALERA_TOOL + ["restore", *args, "--exec"],
                                 ready=lambda: self.dep.galera_status(name).get("healthy"), ready_timeout=WAIT_S * 3)
        self.dep.lab.procs.run(name, self.dep.GALERA_TOOL + ["init-cluster"], timeout=120)
        return time.monotonic() - t

    def rejoin_others(self, restored: str) -> dict:
        took = {}
        for name in self.galera:
            if name == restored:
                continue
            t = time.monotonic()
            self.dep.lab.procs.start(name, "mariadb", self.dep.GALERA_TOOL + ["rejoin", "--exec"],
                                     ready=lambda n=name: self.dep.galera_status(n).get("healthy"),
                                     ready_timeout=WAIT_S * 3)
            took[name] = round(time.monotonic() - t, 1)
        return took

    def flush_caches(self) -> None:
        """The runbook's last step: Keystone's caches hold what the database said before the
        restore; every region's memcached starts empty."""
        for node in self.topo.nodes(role="memcached"):
            self.dep.restart_service(node.name, "memcached")

    def serving_everywhere(self, ks: KeystoneDrills) -> dict:
        """{region: HTTP status of an admin token issued and validated there}."""
        out = {}
        for region in ks.regions:
            got = ks.ks(region, "token", ks.url(region), "admin", ks.password, "admin")
            if got.get("status") != 201:
                out[region] = got.get("status")
                continue
            out[region] = ks.validate(region, got["token"], got["token"]).get("status")
        return out

    def wait_serving(self, ks: KeystoneDrills) -> tuple[bool, dict]:
        seen: dict = {}

        def ok():
            seen.update(self.serving_everywhere(ks))
            return all(v == 200 for v in seen.values())
        return bool(wait_until(ok, WAIT_S, interval=1.0)), seen

    def acked_writes(self, count: int, note: str) -> list[int]:
        """`count` rows written through lab-a's node, each acknowledged with its id."""
        node = self.galera[0]
        proxy_layer.ensure_drill_table(self.dep, node)
        ids = []
        for _ in range(count):
            out = self.dep.sql(node, f"INSERT INTO {proxy_layer.DRILL_DB}.ticks (node) VALUES ('{note}'); "
                                     "SELECT LAST_INSERT_ID()")
            ids.append(int(out.stdout.split()[-1]))
        return ids

    def present(self, ids: list[int]) -> set[int]:
        if not ids:
            return set()
        rows = self.dep.sql(self.galera[-1], f"SELECT id FROM {proxy_layer.DRILL_DB}.ticks WHERE id IN "
                                             f"({','.join(map(str, ids))})", check=False).stdout.split()
        return {int(x) for x in rows if x.isdigit()}

    def next_second(self) -> datetime.datetime:
        """The start of the next whole second (UTC), waited for: a restore --to it keeps
        everything committed before it."""
        t = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=1)
        while datetime.datetime.now(datetime.timezone.utc) < t:
            time.sleep(0.02)
        return t

    # -- B1 -------------------------------------------------------------------------------------
    def drill_backup_under_load(self) -> DrillResult:
        """B1: lab-a's scheduled backup (full: none exists yet) under load in every region."""
        region = self.regions[0]
        name = self.backup_node(region)

        def body(problems, measured):
            before = self.flow_control()
            t = time.monotonic()
            runs = self.scheduled_backup(region)
            measured["backup_s"] = round(time.monotonic() - t, 1)
            after = self.flow_control()
            for out in runs:
                if out.returncode != 0:
                    problems.append(f"the scheduled backup failed (exit {out.returncode}): "
                                    f"{out.stderr.strip().splitlines()[-1:]}")
            report = next((_last_json(l) for l in runs[-1].stdout.splitlines() if '"backup"' in l), {}) if runs else {}
            measured.update(kind=report.get("kind"), size=report.get("size"), desync_s=report.get("desync_s"),
                            copies=report.get("copies"))
            measured["flow_control"] = {
                n: {k.replace("wsrep_flow_control_", ""): after[n].get(k, 0) - before[n].get(k, 0) for k in after[n]}
                for n in after}
            if report.get("copies") != [region, self.regions[1]]:
                problems.append(f"the backup is not in {region}'s and {self.regions[1]}'s containers: {report}")
            listing = self.galera_node(name, "backups", "--verify")
            entries = json.loads(listing.stdout or "[]")
            measured["verified"] = sorted({(e["region"], e["check"]) for e in entries})
            if listing.returncode != 0:
                problems.append(f"backups --verify: {[e for e in entries if not e['check'].endswith('ok')]}")
            if not self.dep.galera_status(name).get("healthy"):
                problems.append(f"{name} is not Synced after the backup")
        result = ChangeDrills(self.dep)._under_load("B1. a backup under load", body)
        seen = result.measured.get("load", {})
        result.measured["longest_write_s"] = seen.get("longest_write_s")
        result.measured["longest_ack_gap_s"] = seen.get("longest_ack_gap_s")
        return result

    # -- B2 -------------------------------------------------------------------------------------
    def _project_with_users(self, ks: KeystoneDrills, token: str, region: str, tag: str) -> dict:
        project = ks.call(region, "POST", token, "/v3/projects",
                          {"project": {"name": f"b2-{tag}", "domain_id": "default"}})["body"]["project"]
        role = ks.call(region, "GET", token, "/v3/roles?name=member")["body"]["roles"][0]
        users = []
        for i in range(2):
            password = _random.token_urlsafe(12)
            user = ks.call(region, "POST", token, "/v3/users",
                           {"user": {"name": f"b2-{tag}-{i}", "domain_id": "default", "password": password,
                                     "default_project_id": project["id"]}}, secret=True)["body"]["user"]
            ks.call(region, "PUT", token, f"/v3/projects/{project['id']}/users/{user['id']}/roles/{role['id']}")
            users.append({"id": user["id"], "name": user["name"], "password": password})
        return {"project": project, "users": users, "role": role}

    def _state_of(self, ks: KeystoneDrills, token: str, region: str, made: dict) -> dict:
        pid = made["project"]["id"]
        project = ks.call(region, "GET", token, f"/v3/projects/{pid}").get("status")
        users = [ks.call(region, "GET", token, f"/v3/users/{u['id']}").get("status") for u in made["users"]]
        got = ks.call(region, "GET", token, f"/v3/role_assignments?scope.project.id={pid}")
        assignments = len((got.get("body") or {}).get("role_assignments", [])) if got.get("status") == 200 else None
        logins = [ks.ks(region, "token", ks.url(region), u["name"], u["password"], made["project"]["name"]).get("status")
                  for u in made["users"]]
        return {"project": project, "users": users, "assignments": assignments, "logins": logins}

    def _tamper(self, container: str, backup_id: str, how: str) -> None:
        """An object of the store changed behind the deployment's back (as an attacker or a
        broken disk would): `how` is "flip" (bytes changed) or "truncate"."""
        obj = f"{self.topo.name}/data/{backup_id}"
        path = self._scratch("ksl-b-")
        try:
            out = self.swift("download", "--output", path, container, obj)
            if out.returncode != 0:
                raise LabError(f"could not download {obj}: {out.stderr.strip()[-200:]}")
            with open(path, "r+b") as fh:
                size = os.path.getsize(path)
                if how == "flip":
                    fh.seek(size // 2)
                    chunk = fh.read(16)
                    fh.seek(size // 2)
                    fh.write(bytes(b ^ 0xFF for b in chunk))
                else:
                    fh.truncate(size // 2)
            out = self.swift("upload", "--object-name", obj, container, path)
            if out.returncode != 0:
                raise LabError(f"could not upload {obj}: {out.stderr.strip()[-200:]}")
        finally:
            if os.path.exists(path):
                os.unlink(path)

    def drill_point_in_time(self) -> DrillResult:
        """B2: a project with users and role assignments deleted by mistake in lab-a, replicated
        everywhere; undone by restore --to the second before it. The newest backup's copy in
        the next region is altered first: a restore from there is refused with the cluster
        down, nothing changed; the restore from lab-a's own container then succeeds."""
        problems: list[str] = []
        measured: dict = {}
        ks = KeystoneDrills(self.dep)
        first, other = self.regions[0], self.regions[1]
        name = self.backup_node(first)
        token = ks.admin_token(first)
        tag = uuid.uuid4().hex[:6]
        # A backup first (the chain), then data only the binary logs will hold.
        out = self.galera_node(name, "backup", "--full")  # a chain of its own (B4 altered older copies)
        if out.returncode != 0:
            return DrillResult("B2. point-in-time restore", False, measured, [f"backup failed: {out.stderr[-300:]}"])
        backup_id = _last_json(out.stdout.splitlines()[0]).get("backup")
        made = self._project_with_users(ks, token, first, tag)
        acked = self.acked_writes(10, f"b2-{tag}")
        wait_until(lambda: self._state_of(ks, token, self.regions[-1], made)["project"] == 200, 60)
        measured["before"] = {r: self._state_of(ks, token, r, made) for r in ks.regions}
        mistake_at = self.next_second()
        # The GTID the mistake's first transaction gets (nothing else writes meanwhile).
        position = self.dep.sql(name, "SELECT @@gtid_binlog_pos").stdout.strip()
        domain, server, seq = next(p for p in position.split(",") if p.startswith("1-")).split("-")
        mistake_gtid = f"{domain}-{server}-{int(seq) + 1}"
        for u in made["users"]:
            ks.call(first, "DELETE", token, f"/v3/users/{u['id']}")
        ks.call(first, "DELETE", token, f"/v3/projects/{made['project']['id']}")
        measured["mistake_at"] = mistake_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        after_mistake = self.acked_writes(3, f"b2-{tag}-after")
        replicated = wait_until(lambda: all(self._state_of(ks, token, r, made)["project"] == 404 for r in ks.regions), 90)
        measured["mistake_everywhere"] = bool(replicated)
        if not replicated:
            problems.append("the deleted project did not disappear in every region")
        ship = self.galera_node(name, "backup", "--binlogs-only")
        if ship.returncode != 0:
            problems.append(f"binary logs not shipped: {ship.stderr[-300:]}")
        # The other way to name the target: the mistake's GTID, found in the shipped binary logs
        # (a dry run: everything a restore does before it touches the node).
        dry = self.galera_node(name, "restore", "--dry-run", "--to-gtid", mistake_gtid)
        measured["to_gtid_dry_run"] = {"gtid": mistake_gtid, "exit": dry.returncode,
                                       "stop_before": _last_json(dry.stdout).get("stop_before")}
        if dry.returncode != 0 or not (_last_json(dry.stdout).get("stop_before") or {}).get("position"):
            problems.append(f"restore --dry-run --to-gtid {mistake_gtid} did not find it: {dry.stderr[-300:]}")
        absent = f"{domain}-{server}-{int(seq) + 100000}"
        dry = self.galera_node(name, "restore", "--dry-run", "--to-gtid", absent)
        measured["unknown_gtid"] = {"exit": dry.returncode, "line": (dry.stderr.strip().splitlines() or [""])[-1][-120:]}
        if dry.returncode != 2 or "holds GTID" not in dry.stderr:
            problems.append(f"a GTID no log holds was not refused: {dry.returncode} {dry.stderr[-200:]}")
        self._tamper(objectstore_container(self.topo, other), backup_id, "flip")
        t_down = time.monotonic()
        self.stop_all_galera()
        datadir = self.dep.lab.procs.host_path(name, "/var/lib/mysql")
        listing_before = sorted(os.listdir(datadir))
        refused = self.galera_node(name, "restore", "--to", measured["mistake_at"], "--from", other)
        measured["tampered_copy"] = {"exit": refused.returncode, "line": refused.stderr.strip().splitlines()[-1:]}
        if refused.returncode != 2 or "checksum fails" not in refused.stderr:
            problems.append(f"the altered copy in {other} was not refused: {refused.returncode} {refused.stderr[-300:]}")
        if sorted(os.listdir(datadir)) != listing_before:
            problems.append("the refused restore changed the data directory")
        measured["restore_s"] = round(self.restore_on(name, "--to", measured["mistake_at"]), 1)
        measured["rejoin_s"] = self.rejoin_others(name)
        self.flush_caches()
        serving, seen = self.wait_serving(ks)
        measured["serving_again_s"] = round(time.monotonic() - t_down, 1)
        if not serving:
            problems.append(f"not every region serves after the restore: {seen}")
        token = ks.admin_token(first)
        measured["after"] = {r: self._state_of(ks, token, r, made) for r in ks.regions}
        for region, state in measured["after"].items():
            want = measured["before"][region]
            if state != want:
                problems.append(f"{region} after the restore: {state}, before the mistake: {want}")
        missing = sorted(set(acked) - self.present(acked))
        measured["acked_before_mistake"] = len(acked)
        measured["missing_before_mistake"] = missing
        if missing:
            problems.append(f"{len(missing)} writes acknowledged before the mistake are missing")
        # Writes after the target are gone by design (the restore goes back to before it).
        measured["after_target_kept"] = len(self.present(after_mistake))
        return DrillResult("B2. point-in-time restore", not problems, measured, problems)

    # -- B3 -------------------------------------------------------------------------------------
    def drill_total_loss(self) -> DrillResult:
        """B3: every Galera data volume lost. The latest backup chain and the binary logs it
        shipped rebuild the cluster on lab-a's backup node; the others join by SST."""
        problems: list[str] = []
        measured: dict = {}
        ks = KeystoneDrills(self.dep)
        first = self.regions[0]
        name = self.backup_node(first)
        tag = uuid.uuid4().hex[:6]
        out = self.galera_node(name, "backup")  # the hourly run: an incremental and the logs
        if out.returncode != 0:
            return DrillResult("B3. total loss", False, measured, [f"backup failed: {out.stderr[-300:]}"])
        shipped_ids = self.acked_writes(10, f"b3-{tag}")
        ship = self.galera_node(name, "backup", "--binlogs-only")  # as the next run would
        shipped_at = time.monotonic()
        if ship.returncode != 0:
            problems.append(f"binary logs not shipped: {ship.stderr[-300:]}")
        unshipped_ids = self.acked_writes(5, f"b3-{tag}-late")
        lost_at = time.monotonic()
        self.stop_all_galera()
        for node in self.galera:  # every data volume gone: new, empty ones attached
            datadir = self.dep.lab.procs.host_path(node, "/var/lib/mysql")
            for entry in os.listdir(datadir):
                path = os.path.join(datadir, entry)
                if os.path.isdir(path) and not os.path.islink(path):
                    import shutil
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
        t = time.monotonic()
        measured["restore_s"] = round(self.restore_on(name), 1)
        measured["rejoin_s"] = self.rejoin_others(name)
        self.flush_caches()
        serving, seen = self.wait_serving(ks)
        measured["rto_s"] = round(time.monotonic() - t, 1)
        if not serving:
            problems.append(f"not every region serves after the rebuild: {seen}")
        missing_shipped = sorted(set(shipped_ids) - self.present(shipped_ids))
        lost = sorted(set(unshipped_ids) - self.present(unshipped_ids))
        measured["rpo"] = {"acknowledged_writes_lost": len(lost), "of": len(unshipped_ids),
                           "window_s": round(lost_at - shipped_at, 1),
                           "why": "written after the last binary log shipped (the hourly run ships them)"}
        measured["shipped_writes_present"] = f"{len(shipped_ids) - len(missing_shipped)}/{len(shipped_ids)}"
        if missing_shipped:
            problems.append(f"{len(missing_shipped)} writes in shipped binary logs are missing: {missing_shipped}")
        return DrillResult("B3. total loss of every Galera volume", not problems, measured, problems)

    # -- B4 -------------------------------------------------------------------------------------
    def drill_refused_backups(self) -> DrillResult:
        """B4: in lab-b's container (the copy of lab-a's backups) one backup altered, one
        truncated, one manifest signed with another deployment's key: `backups --verify`
        names each, `restore --dry-run` refuses each; the untouched copy in lab-a restores
        (dry run). Nothing is restored, the cluster keeps running."""
        problems: list[str] = []
        measured: dict = {}
        first, other = self.regions[0], self.regions[1]
        name = self.backup_node(first)
        # Two incrementals on top of the newest full (B1's, or a new one if none exists).
        reports = []
        for kind in ("", "--incremental"):
            out = self.galera_node(name, "backup", *([kind] if kind else []))
            if out.returncode != 0:
                return DrillResult("B4. refused backups", False, measured, [f"backup failed: {out.stderr[-300:]}"])
            reports.append(_last_json(out.stdout.splitlines()[0]))
        ids = ([reports[0]["chain"]] if reports[0]["kind"] == "incremental" else []) + [r["backup"] for r in reports]
        if len(ids) < 3:  # no chain existed: the first run was the full
            out = self.galera_node(name, "backup", "--incremental")
            ids.append(_last_json(out.stdout.splitlines()[0]).get("backup"))
        container = objectstore_container(self.topo, other)
        self._tamper(container, ids[0], "flip")
        self._tamper(container, ids[1], "truncate")
        self._foreign_manifest(container, ids[2])
        listing = self.galera_node(name, "backups", "--region", other, "--verify")
        checks = {e["id"]: e["check"] for e in json.loads(listing.stdout or "[]")}
        measured["verify"] = {i: checks.get(i) for i in ids}
        if not (checks.get(ids[0], "").startswith("checksum fails") and checks.get(ids[1], "").startswith("checksum fails")
                and "authentication code" in checks.get(ids[2], "")) or listing.returncode != 1:
            problems.append(f"backups --verify did not name every bad copy: {measured['verify']}")
        refusals = {}
        for backup_id in ids:
            out = self.galera_node(name, "restore", "--dry-run", "--from", other, "--backup", backup_id)
            refusals[backup_id] = {"exit": out.returncode, "line": (out.stderr.strip().splitlines() or [""])[-1][-160:]}
            if out.returncode != 2:
                problems.append(f"restore --dry-run of the bad {backup_id} was not refused: {refusals[backup_id]}")
        measured["refusals"] = refusals
        good = self.galera_node(name, "restore", "--dry-run", "--from", first)
        measured["good_copy"] = {"exit": good.returncode, "chain": _last_json(good.stdout).get("chain")}
        if good.returncode != 0:
            problems.append(f"the good copy in {first} did not restore (dry run): {good.stderr[-300:]}")
        if not all(self.dep.galera_status(n).get("healthy") for n in self.galera):
            problems.append("a member is not Synced after the refusals")
        return DrillResult("B4. altered, truncated and foreign backups refused", not problems, measured, problems)

    def _foreign_manifest(self, container: str, backup_id: str) -> None:
        """The manifest replaced by one signed with another deployment's backup key."""
        import importlib.util
        from keystone_multiregion.render import AGENTS
        spec = importlib.util.spec_from_file_location("galera_backup_lab", AGENTS / "galera_backup.py")
        gb = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gb)
        obj = f"{self.topo.name}/manifests/{backup_id}.json"
        path = self._scratch("ksl-m-")
        try:
            if self.swift("download", "--output", path, container, obj).returncode != 0:
                raise LabError(f"could not download {obj}")
            with open(path) as fh:
                manifest = json.load(fh)
            with open(path, "w") as fh:
                json.dump(gb.sign(manifest, _random.token_hex(32)), fh)
            if self.swift("upload", "--object-name", obj, container, path).returncode != 0:
                raise LabError(f"could not upload {obj}")
        finally:
            if os.path.exists(path):
                os.unlink(path)

    def run_all(self, log=print) -> list[DrillResult]:
        results = []
        for drill in (self.drill_backup_under_load, self.drill_refused_backups, self.drill_point_in_time,
                      self.drill_total_loss):
            result = drill()
            log(result.line())
            results.append(result)
        return results


def objectstore_container(topo, region: str) -> str:
    return topo.backup.container(region)
