"""Galera drills on the running lab: each makes something happen to the real cluster,
measures what followed, and says whether it was what the design promises.

Every wait is bounded in time; every load loop in count and time. Writes go to each
region's Galera node directly (the internal proxy arrives with the proxy layer).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field

from keystone_multiregion.recovery import most_advanced

from .deployment import GALERA_TOOL, LabDeployment
from .util import LabError

DB = "drill"
# MariaDB's answer on a node outside the Primary component.
NOT_PRIMARY = re.compile(r"ERROR 1047|WSREP has not yet prepared node for application use")


def wait_until(predicate, timeout: float, interval: float = 0.5):
    """predicate's first truthy value, or None after `timeout` seconds (bounded in time and
    in count: at most timeout/interval + 1 calls)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


@dataclass
class DrillResult:
    name: str
    ok: bool
    measured: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    def line(self) -> str:
        figures = ", ".join(f"{k}={v}" for k, v in self.measured.items())
        text = f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {figures}"
        return text + ("".join(f"\n      - {p}" for p in self.problems) if self.problems else "")


class GaleraDrills:
    def __init__(self, dep: LabDeployment):
        self.dep = dep
        self.topo = dep.topo
        self.regions = [r.name for r in self.topo.regions if self.topo.nodes(r.name, "galera")]
        self.node = {r: self.topo.nodes(r, "galera")[0].name for r in self.regions}
        self.acknowledged: list[tuple[int, str]] = []  # (id, region) of every committed write

    # -- helpers ---------------------------------------------------------------------------
    def status(self, region: str) -> dict:
        return self.dep.galera_status(self.node[region])

    def wait(self, predicate, timeout: float, interval: float = 0.5):
        return wait_until(predicate, timeout, interval)

    def sql(self, region: str, statement: str, check: bool = False):
        return self.dep.sql(self.node[region], statement, timeout=30, check=check)

    def setup(self) -> None:
        first = self.regions[0]
        self.sql(first, f"CREATE DATABASE IF NOT EXISTS {DB}; "
                        f"CREATE TABLE IF NOT EXISTS {DB}.ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                        "region VARCHAR(32) NOT NULL, note VARCHAR(64) NOT NULL) ENGINE=InnoDB; "
                        f"CREATE TABLE IF NOT EXISTS {DB}.counter (region VARCHAR(32) PRIMARY KEY, n BIGINT NOT NULL) "
                        "ENGINE=InnoDB", check=True)

    def write(self, region: str, note: str) -> tuple[int | None, str]:
        """A locking write in `region`: lock its counter row, append to the ledger, commit.
        Returns (ledger id, '') when acknowledged, (None, error) when refused."""
        out = self.sql(region, f"START TRANSACTION; "
                               f"INSERT INTO {DB}.counter VALUES ('{region}', 0) ON DUPLICATE KEY UPDATE n = n; "
                               f"SELECT n FROM {DB}.counter WHERE region = '{region}' FOR UPDATE; "
                               f"UPDATE {DB}.counter SET n = n + 1 WHERE region = '{region}'; "
                               f"INSERT INTO {DB}.ledger (region, note) VALUES ('{region}', '{note}'); "
                               "SELECT LAST_INSERT_ID(); COMMIT")
        if out.returncode != 0:
            return None, (out.stderr.strip().splitlines() or ["error"])[-1]
        ident = int(out.stdout.split()[-1])
        self.acknowledged.append((ident, region))
        return ident, ""

    def has_row(self, region: str, ident: int) -> bool | None:
        out = self.sql(region, f"SELECT COUNT(*) FROM {DB}.ledger WHERE id = {ident}")
        return None if out.returncode != 0 else out.stdout.strip() == "1"

    def log_offsets(self) -> dict[str, int]:
        return {r: os.path.getsize(self._log(r)) if os.path.exists(self._log(r)) else 0 for r in self.regions}

    def _log(self, region: str) -> str:
        return self.dep.lab.procs.host_path(self.node[region], "/var/log/mysql/error.log")

    def _log_since(self, region: str, offset: int) -> str:
        if not os.path.exists(self._log(region)):
            return ""
        with open(self._log(region), errors="replace") as fh:
            fh.seek(offset)
            return fh.read()

    def transfer_kind(self, joiner: str, offsets: dict[str, int]) -> str | None:
        """'SST', 'IST' or None for the state transfers to `joiner`'s node since `offsets`.
        A donor that ran its SST script without --bypass sent a full copy (SST); with
        --bypass, or with no script at all, the joiner received only an IST."""
        address = self.topo.node(self.node[joiner]).address
        for region in self.regions:
            if region != joiner:
                for line in self._log_since(region, offsets.get(region, 0)).splitlines():
                    if "--role 'donor'" in line and f"'{address}:4444" in line and "--bypass" not in line:
                        return "SST"
        return "IST" if "IST received" in self._log_since(joiner, offsets.get(joiner, 0)) else None

    def synced_everywhere(self, size: int | None = None) -> bool:
        """Every data node Synced and Primary, in a cluster of `size` (default: every voter)."""
        size = len(self.topo.galera_members) if size is None else size
        for region in self.regions:
            s = self.status(region)
            if not (s.get("healthy") and s.get("wsrep_cluster_size") == str(size)):
                return False
        return True

    def restart(self, region: str, timeout: float = 180) -> float:
        t = time.monotonic()
        self.dep.start_galera(self.node[region], timeout=timeout)
        return round(time.monotonic() - t, 2)

    # -- drills -----------------------------------------------------------------------------
    def drill_cluster_forms(self) -> DrillResult:
        size = len(self.topo.galera_members)
        statuses = {r: self.status(r) for r in self.regions}
        problems = [f"{r}: {s}" for r, s in statuses.items()
                    if not (s.get("healthy") and s.get("wsrep_cluster_size") == str(size))]
        return DrillResult("1. cluster forms across regions", not problems,
                           {"cluster_size": {r: s.get("wsrep_cluster_size") for r, s in statuses.items()},
                            "state": {r: f"{s.get('wsrep_local_state_comment')}/{s.get('wsrep_cluster_status')}"
                                      for r, s in statuses.items()}}, problems)

    def drill_replication(self) -> DrillResult:
        self.setup()
        t = time.monotonic()
        ident, err = self.write(self.regions[0], "written in the first region")
        write_ms = round((time.monotonic() - t) * 1000, 1)
        problems = [f"write refused: {err}"] if ident is None else []
        seen = {r: self.has_row(r, ident) for r in self.regions[1:]} if ident else {}
        problems += [f"row {ident} missing in {r}" for r, ok in seen.items() if not ok]
        return DrillResult("2. a row written in one region is read in every other", not problems,
                           {"row": ident, "commit_ms": write_ms, "read_in": seen}, problems)

    def drill_partition(self, region: str | None = None, timeout: float = 90) -> DrillResult:
        """Cut one region off: the others stay Primary and keep committing; the cut region
        goes non-Primary, still answers reads (dirty reads) and refuses writes."""
        region = region or self.regions[-1]
        others = [r for r in self.regions if r != region]
        hosts = [n.name for n in self.topo.nodes(region)]
        # Cut from every other region, a witness site included.
        peers = [r.cidr for r in self.topo.regions if r.name != region]
        self.setup()
        problems, measured = [], {"partitioned": region}
        before, _ = self.write(others[0], "before the partition")
        t = time.monotonic()
        self.dep.lab.net.partition(hosts, peers=peers)
        went = self.wait(lambda: self.status(region).get("wsrep_cluster_status") == "non-Primary", timeout)
        measured["non_primary_after_s"] = round(time.monotonic() - t, 1) if went else None
        if not went:
            problems.append(f"{region} did not leave the Primary component within {timeout}s")
        remaining = len([n for n in self.topo.galera_members if n.region != region])
        majority = self.wait(lambda: all(self.status(r).get("wsrep_cluster_status") == "Primary"
                                         and self.status(r).get("wsrep_cluster_size") == str(remaining)
                                         for r in others), timeout)
        if not majority:
            problems.append(f"{others} did not settle as a Primary component of {remaining}")
        during = []
        for r in others:
            ident, err = self.write(r, f"during the partition of {region}")
            if ident is None:
                problems.append(f"majority region {r} refused a write: {err}")
            else:
                during.append(ident)
        measured["majority_commits"] = len(during)
        read = self.sql(region, f"SELECT COUNT(*) FROM {DB}.ledger WHERE id = {before}")
        measured["minority_read"] = read.stdout.strip() if read.returncode == 0 else read.stderr.strip()
        if read.returncode != 0 or read.stdout.strip() != "1":
            problems.append(f"{region} did not answer a read while partitioned: {measured['minority_read']}")
        ident, err = self.write(region, "must be refused")
        measured["minority_write"] = err or f"ACCEPTED as row {ident}"
        if ident is not None:
            problems.append(f"{region} accepted a write outside the Primary component")
            self.acknowledged.remove((ident, region))
        elif not NOT_PRIMARY.search(err):
            problems.append(f"{region} refused the write with an unexpected error: {err}")
        self._partition = {"region": region, "hosts": hosts, "rows": during}
        return DrillResult("3. a partitioned region goes read-only; the others carry on", not problems,
                           measured, problems)

    def drill_heal(self, timeout: float = 120) -> DrillResult:
        part = getattr(self, "_partition", None)
        if part is None:
            return DrillResult("4. heal", False, {}, ["no partition to heal (run drill 3 first)"])
        region = part["region"]
        offsets = self.log_offsets()
        t = time.monotonic()
        self.dep.lab.net.heal(part["hosts"])
        back = self.wait(lambda: self.synced_everywhere(), timeout)
        measured = {"rejoin_s": round(time.monotonic() - t, 1) if back else None,
                    "transfer": self.transfer_kind(region, offsets)}
        problems = [] if back else [f"{region} did not rejoin within {timeout}s"]
        missing = [i for i in part["rows"] if not self.has_row(region, i)]
        measured["rows_caught_up"] = f"{len(part['rows']) - len(missing)}/{len(part['rows'])}"
        problems += [f"row {i} missing in {region} after the heal" for i in missing]
        if measured["transfer"] != "IST":
            problems.append(f"the region rejoined by {measured['transfer']}, not IST")
        self._partition = None
        return DrillResult("4. the region rejoins by itself with every row", not problems, measured, problems)

    def drill_kill_restart(self, region: str | None = None) -> DrillResult:
        region = region or self.regions[1]
        name = self.node[region]
        self.dep.lab.procs.kill(name, "mariadb")
        gone = self.wait(lambda: not self.dep.lab.procs.is_alive(name, "mariadb"), 15, 0.2)
        others = [r for r in self.regions if r != region]
        self.wait(lambda: all(self.status(r).get("wsrep_cluster_size") == str(len(self.topo.galera_members) - 1)
                              for r in others), 60)
        written = [self.write(r, f"while {region} was down")[0] for r in others]
        offsets = self.log_offsets()
        problems = [] if gone else [f"kill -9 did not stop {name}"]
        try:
            rejoin = self.restart(region)
        except (LabError, TimeoutError) as exc:
            return DrillResult("5. kill -9 and restart", False, {}, [f"restart failed: {exc}"])
        measured = {"killed": name, "rejoin_s": rejoin, "transfer": self.transfer_kind(region, offsets)}
        if measured["transfer"] != "IST":
            problems.append(f"rejoined by {measured['transfer']}, not IST")
        missing = [i for i in written if i is None or not self.has_row(region, i)]
        problems += [f"row {i} written meanwhile is missing on {name}" for i in missing]
        return DrillResult("5. a killed node restarts and rejoins by IST", not problems, measured, problems)

    def drill_lock_load(self, iterations: int = 24, max_seconds: float = 240) -> DrillResult:
        """The source design's lock/load test: in each region in turn a locking write, then
        read and verify it from every region, checking cluster size and status; meanwhile a
        region is partitioned and healed and a node is killed and restarted."""
        self.setup()
        first_ack = len(self.acknowledged)
        cut, victim = self.regions[-1], self.regions[1]
        schedule = {iterations // 6: "partition", iterations // 3: "heal",
                    iterations // 2: "kill", (2 * iterations) // 3: "restart"}
        events, refused, stale, checks = [], 0, 0, []
        offsets, rejoin = {}, {}
        t0 = time.monotonic()
        for i in range(iterations):
            if time.monotonic() - t0 > max_seconds:
                events.append({"iteration": i, "event": "time budget reached"})
                break
            action = schedule.get(i)
            if action == "partition":
                self.dep.lab.net.partition([n.name for n in self.topo.nodes(cut)],
                                           peers=[r.cidr for r in self.topo.regions if r.name != cut])
            elif action == "heal":
                offsets[cut] = self.log_offsets()
                t = time.monotonic()
                self.dep.lab.net.heal([n.name for n in self.topo.nodes(cut)])
                ok = self.wait(lambda: self.synced_everywhere(), 120)
                rejoin[cut] = {"rejoin_s": round(time.monotonic() - t, 1) if ok else None,
                               "transfer": self.transfer_kind(cut, offsets[cut])}
            elif action == "kill":
                self.dep.lab.procs.kill(self.node[victim], "mariadb")
            elif action == "restart":
                offsets[victim] = self.log_offsets()
                try:
                    rejoin[victim] = {"rejoin_s": self.restart(victim),
                                      "transfer": self.transfer_kind(victim, offsets[victim])}
                except (LabError, TimeoutError) as exc:
                    rejoin[victim] = {"error": str(exc)}
            if action:
                events.append({"iteration": i, "event": action, "t_s": round(time.monotonic() - t0, 1)})
            region = self.regions[i % len(self.regions)]
            ident, err = self.write(region, f"lock-load {i}")
            if ident is None:
                refused += 1
                continue
            for r in self.regions:
                seen = self.has_row(r, ident)
                if seen is False:
                    stale += 1  # a non-Primary or lagging node: counted, checked again at the end
            checks.append({r: self.status(r).get("wsrep_cluster_size") for r in self.regions})
        settled = self.wait(lambda: self.synced_everywhere(), 180)
        report = self.final_consistency()
        acknowledged = len(self.acknowledged) - first_ack
        measured = {"iterations": i + 1, "acknowledged_writes": acknowledged, "refused_writes": refused,
                    "stale_reads_during_faults": stale, "lost_writes": len(report["lost"]),
                    "divergent_tables": report["divergent_tables"], "rejoin": rejoin, "events": events,
                    "seconds": round(time.monotonic() - t0, 1)}
        problems = [] if settled else ["the cluster did not settle Synced everywhere afterwards"]
        problems += [f"acknowledged write {w} lost" for w in report["lost"][:10]]
        problems += [f"table {t} differs between nodes" for t in report["divergent_tables"]]
        problems += [f"{r} rejoined by {v.get('transfer')}, not IST" for r, v in rejoin.items()
                     if "error" not in v and v.get("transfer") != "IST"]
        problems += [f"{r}: {v['error']}" for r, v in rejoin.items() if "error" in v]
        if acknowledged == 0:
            problems.append("no write was acknowledged")
        return DrillResult("6. lock/load test through a partition, a heal and a kill", not problems,
                           measured, problems)

    def final_consistency(self) -> dict:
        """Every acknowledged write on every node, and per-table checksums that agree."""
        lost = []
        ids = {i for i, _ in self.acknowledged}
        for r in self.regions:
            out = self.sql(r, f"SELECT id FROM {DB}.ledger")
            present = {int(x) for x in out.stdout.split()} if out.returncode == 0 else set()
            lost += [f"{i} on {self.node[r]}" for i in sorted(ids - present)]
        sums: dict[str, set] = {}
        for r in self.regions:
            out = self.sql(r, f"CHECKSUM TABLE {DB}.ledger, {DB}.counter")
            for line in out.stdout.splitlines():
                table, value = line.split("\t")
                sums.setdefault(table, set()).add(value)
        return {"lost": lost, "divergent_tables": sorted(t for t, v in sums.items() if len(v) > 1),
                "checksums": {t: sorted(v) for t, v in sums.items()}}

    def _all_down(self) -> None:
        for r in self.regions:
            self.dep.lab.procs.kill(self.node[r], "mariadb")
        self.wait(lambda: not any(self.dep.lab.procs.is_alive(self.node[r], "mariadb") for r in self.regions), 20)

    def _recover(self, problems: list) -> tuple[dict, str | None]:
        """Full-outage recovery as the README says: recover-report on every node, the plan's
        node started with bootstrap-here, the others joined. Returns (reports, chosen)."""
        reports = {}
        for r in self.regions:
            out = self.dep.lab.procs.run(self.node[r], GALERA_TOOL + ["recover-report"], timeout=300)
            reports[self.node[r]] = json.loads(out.stdout.strip().splitlines()[-1])
        chosen = most_advanced(list(reports.values()), preferred=self.node[self.topo.bootstrap_region])
        try:
            self.dep.lab.procs.start(chosen, "mariadb", GALERA_TOOL + ["bootstrap-here", "--exec"],
                                     ready=lambda: self.dep.galera_status(chosen).get("healthy"), ready_timeout=120)
            for r in self.regions:
                if self.node[r] != chosen:
                    self.dep.start_galera(self.node[r])
        except (LabError, TimeoutError) as exc:
            problems.append(f"recovery failed: {exc}")
        return reports, chosen

    def _nothing_lost(self, last_write: int | None, measured: dict, problems: list) -> None:
        """After a recovery: every acknowledged write on every node, the last one included."""
        report = self.final_consistency()
        measured["lost_writes"] = len(report["lost"])
        problems += [f"acknowledged write {w} lost" for w in report["lost"][:10]]
        if last_write is None:
            problems.append("the last write before the outage was refused")

    def drill_full_outage(self) -> DrillResult:
        """Every node dies at once (kill -9); galera-node recover-report on each, the most
        advanced one is started with bootstrap-here, the others join."""
        ident, _ = self.write(self.regions[0], "last write before the outage")
        self._all_down()
        t = time.monotonic()
        problems = []
        reports, chosen = self._recover(problems)
        back = self.wait(lambda: self.synced_everywhere(), 120)
        measured = {"reports": {n: {"seqno": v.get("seqno"), "safe_to_bootstrap": v.get("safe_to_bootstrap")}
                                for n, v in reports.items()},
                    "bootstrapped_from": chosen, "recovered_s": round(time.monotonic() - t, 1) if back else None}
        if not back:
            problems.append("the cluster did not come back Synced everywhere")
        self._nothing_lost(ident, measured, problems)
        return DrillResult("7. full outage, recovered from the most advanced node", not problems, measured, problems)

    def _grastates(self) -> dict[str, str]:
        out = {}
        for r in self.regions:
            path = self.dep.lab.procs.host_path(self.node[r], "/var/lib/mysql/grastate.dat")
            try:
                with open(path) as fh:
                    out[self.node[r]] = " ".join(line.split(":", 1)[1].strip() for line in fh
                                                 if line.startswith(("uuid", "seqno")))
            except OSError:
                out[self.node[r]] = None
        return out

    def drill_missing_volume(self, refuse_timeout: float = 60) -> DrillResult:
        """Every Galera node down; the bootstrap node restarts without its data volume (an
        empty /var/lib/mysql, no file system with the volume's label): galera-node refuses,
        no cluster forms, no node's data changes. Then the volume comes back and the cluster
        is recovered as after any full outage, so later drills run on it."""
        from .layers import galera as layer
        boot = self.node[self.topo.bootstrap_region]
        problems: list[str] = []
        self.setup()  # its tables, when G9 runs on its own
        ident, _ = self.write(self.regions[0], "last write before the volume went missing")
        self._all_down()
        before = self._grastates()
        empty = os.path.join(self.dep.lab.procs.root_dir(boot), "no-volume", "mysql")
        layer.detach_volume(self.dep, boot, empty)
        measured: dict = {"node": boot}
        try:
            log = self.dep.lab.procs.log_path(boot, "mariadb")
            offset = os.path.getsize(log) if os.path.exists(log) else 0
            self.dep.lab.procs.start(boot, "mariadb", GALERA_TOOL + ["start", "--exec"])
            exited = self.wait(lambda: not self.dep.lab.procs.is_alive(boot, "mariadb"), refuse_timeout)
            if not exited:
                problems.append(f"galera-node start on {boot} was still running after {refuse_timeout}s "
                                f"(status {self.dep.galera_status(boot) or 'no answer'})")
            self.dep.lab.procs.stop(boot, "mariadb")
            with open(log, errors="replace") as fh:
                fh.seek(offset)
                said = [line.strip() for line in fh if "galera-node:" in line or '"action"' in line]
            measured["said"] = said[-1] if said else None
            if not any("refusing to start" in line for line in said):
                problems.append(f"{boot} did not refuse: {said or 'nothing logged'}")
            measured["status_without_volume"] = self.dep.galera_status(boot).get("wsrep_cluster_status") or "no server"
            if measured["status_without_volume"] != "no server":
                problems.append(f"a server answered on {boot} without its volume")
            leftovers = os.listdir(empty) if os.path.isdir(empty) else []
            measured["written_without_volume"] = leftovers
            if leftovers:
                problems.append(f"files were written to the empty directory: {leftovers}")
        finally:
            layer.attach_volume(self.dep, boot)
        # Read with the volume back in place (while detached, the node's path is the empty
        # directory): every node's cluster state as it was before the refused start.
        after = self._grastates()
        measured["grastate_unchanged"] = after == before
        if after != before:
            problems.append(f"cluster state changed while refused: {before} -> {after}")
        t = time.monotonic()
        reports, chosen = self._recover(problems)
        back = self.wait(lambda: self.synced_everywhere(), 120)
        measured.update(recovered_from=chosen, recovered_s=round(time.monotonic() - t, 1) if back else None)
        if not back:
            problems.append("the cluster did not come back Synced everywhere after the volume returned")
        self._nothing_lost(ident, measured, problems)
        return DrillResult("G9. the bootstrap node without its data volume refuses to start a cluster", not problems,
                           measured, problems)

    def drill_wan_latency(self, one_way_ms: float = 50, samples: int = 5) -> DrillResult:
        """With WAN latency between regions, a commit waits for a round trip to the other
        regions while a read stays local: the cost of synchronous replication, measured."""
        def median(values):
            values = sorted(values)
            return round(values[len(values) // 2], 1)

        def timed(fn):
            t = time.monotonic()
            fn()
            return (time.monotonic() - t) * 1000

        self.setup()
        region = self.regions[0]
        # The lab may run with WAN latency already (up --wan-latency-ms): measure the
        # baseline without it and put it back afterwards.
        before = self.dep.lab.net.latency(self.node[region])
        self.dep.set_wan_latency(0, roles=("galera",))
        base_commit = median([timed(lambda: self.write(region, "no delay")) for _ in range(samples)])
        base_read = median([timed(lambda: self.sql(region, f"SELECT COUNT(*) FROM {DB}.ledger"))
                            for _ in range(samples)])
        mode = self.dep.set_wan_latency(one_way_ms, roles=("galera",))
        try:
            rtt = self.dep.lab.net.ping(self.node[region], self.node[self.regions[1]], count=3, interval=0.2,
                                        timeout=5).avg_ms
            commit = median([timed(lambda: self.write(region, "across the WAN")) for _ in range(samples)])
            read = median([timed(lambda: self.sql(region, f"SELECT COUNT(*) FROM {DB}.ledger"))
                           for _ in range(samples)])
        finally:
            self.dep.set_wan_latency(before["ms"] if before else 0, roles=("galera",))
        measured = {"one_way_ms": one_way_ms, "mechanism": mode, "rtt_ms": rtt, "commit_ms": commit,
                    "commit_ms_without_delay": base_commit, "read_ms": read, "read_ms_without_delay": base_read}
        problems = []
        if rtt is None or rtt < 2 * one_way_ms * 0.9:
            problems.append(f"the round trip between regions was {rtt} ms, not about {2 * one_way_ms} ms")
        if commit - base_commit < 2 * one_way_ms * 0.9:
            problems.append("a commit did not wait for the other regions")
        # Outcome, not speed: a read that waited for another region pays at least one
        # round trip (2 x one_way_ms); anything less is local (process start-up noise included).
        if read - base_read >= 2 * one_way_ms * 0.9:
            problems.append("a local read paid the WAN latency (a round trip)")
        return DrillResult("8. WAN latency: commits wait for the other regions, reads stay local", not problems,
                           measured, problems)

    def run_all(self, log=print) -> list[DrillResult]:
        results = []
        for drill in (self.drill_cluster_forms, self.drill_replication, self.drill_partition, self.drill_heal,
                      self.drill_kill_restart, self.drill_lock_load, self.drill_full_outage,
                      self.drill_missing_volume, self.drill_wan_latency):
            result = drill()
            log(result.line())
            results.append(result)
        return results


def report(results: list[DrillResult]) -> dict:
    return {"drills": [asdict(r) for r in results], "passed": sum(r.ok for r in results),
            "failed": sum(not r.ok for r in results)}
